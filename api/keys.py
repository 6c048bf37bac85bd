"""Typed keys for everything the app and its requests carry."""

from __future__ import annotations

from aiohttp import web
from celery import Celery

from api.throttle import LoginGuard
from imagesvc.settings import Settings
from models.db import Database
from models.instances import InstanceInventory
from models.reads import Reads
from models.writes import Writes
from workers.job_queue import JobQueue

SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)
READS = web.AppKey("reads", Reads)
WRITES = web.AppKey("writes", Writes)
INVENTORY = web.AppKey("inventory", InstanceInventory)
CELERY = web.AppKey("celery", Celery)
JOB_QUEUE = web.AppKey("job_queue", JobQueue)
LOGIN_GUARD = web.AppKey("login_guard", LoginGuard)

# Set by the auth middleware on every authenticated request.
ACCOUNT_ID = web.RequestKey("account_id", str)
# Set instead, to the request's bearer token, for a handler that checks it in its own
# first statement (auth.checks_own_token); the handler then sets ACCOUNT_ID.
BEARER_TOKEN = web.RequestKey("bearer_token", str)

# Set by the request-id middleware on every request: the id the response returns.
REQUEST_ID = web.RequestKey("request_id", str)
