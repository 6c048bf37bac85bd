"""The domain: tables, state machines and the queries both entry points use.

Nothing here imports aiohttp or Celery.
"""
