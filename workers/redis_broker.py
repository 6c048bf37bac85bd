"""kombu's Redis transport, with one fix: a worker's consumer survives a Redis restart.

When Redis goes away, Celery 5.7's consumer cleans up the lost connection in two
steps (``Consumer.on_connection_error_after_connected``): ``connection.collect()``,
then ``connection.close()``. With a second channel open (the remote-control
channel), the first step can fail halfway: the second channel's close raises a
connection error, which ends ``collect``'s loop over the channels before it reaches
the task channel, and ``collect`` then detaches the transport from its connection.
The second step closes that task channel, which tries to give back the messages it
holds unacknowledged and asks the detached transport where Redis is: an
``AttributeError`` that neither kombu nor Celery expects. The consumer dies with it,
and the worker with it; the jobs wait until something restarts it.

Here that question raises a connection error instead, which closing already
ignores: the consumer reconnects as it does for every other lost connection. The
messages that channel held stay in Redis's unacknowledged set, as after a
``SIGKILL``; the jobs they carry are still pending or working rows, which the job
sweep sends again (workers/job_sweep.py), and a job already settled is not run twice.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES, redis
from redis.exceptions import ConnectionError as RedisConnectionError

SCHEMES = ("redis", "rediss")


class Channel(redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:  # the connection was collected (module doc)
            raise RedisConnectionError("the broker connection was closed")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
        return params


class Transport(redis.Transport):
    Channel = Channel


def register() -> None:
    """Make ``redis://`` and ``rediss://`` broker URLs use this transport."""
    for scheme in SCHEMES:
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
