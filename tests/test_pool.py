"""The API's pool of asyncpg connections (models/pool.py), on a real PostgreSQL.

It bounds the connections checked out at once, keeps and reuses the good ones,
and never hands out again one that may still be busy or broken: one given back
from a cancelled block or inside a transaction, one closed, one expired.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from models.db import Database
from models.pool import ConnectionPool
from models.reads import connection_lost


@pytest.fixture
async def pool(own_database: Database) -> AsyncIterator[ConnectionPool]:
    if own_database.engine.dialect.name != "postgresql":
        pytest.skip("the asyncpg pool serves PostgreSQL only")
    dsn = make_url(own_database.url).set(drivername="postgresql").render_as_string(False)
    connections = ConnectionPool(dsn, 2, connect_timeout=5)
    yield connections
    await connections.close()


async def _backend(pool: ConnectionPool) -> int:
    async with pool.acquire() as connection:
        pid: int = await connection.fetchval("SELECT pg_backend_pid()")
        return pid


async def test_a_connection_given_back_is_the_next_one_handed_out(pool: ConnectionPool) -> None:
    first = await _backend(pool)
    assert await _backend(pool) == first


async def test_no_more_than_its_size_are_checked_out_and_the_others_wait_their_turn(
    pool: ConnectionPool,
) -> None:
    held = asyncio.Event()
    release = asyncio.Event()
    order: list[str] = []

    async def hold(name: str) -> None:
        async with pool.acquire():
            order.append(name)
            held.set()
            await release.wait()

    holders = [asyncio.create_task(hold(name)) for name in ("a", "b")]
    await held.wait()
    await asyncio.sleep(0.05)
    waiting = [asyncio.create_task(hold(name)) for name in ("c", "d")]
    await asyncio.sleep(0.2)
    assert sorted(order) == ["a", "b"]  # c and d wait: two connections at most
    release.set()
    await asyncio.wait_for(asyncio.gather(*holders, *waiting), timeout=10)
    assert order[2:] == ["c", "d"]  # first come, first served


async def test_a_connection_from_a_cancelled_block_is_not_reused(pool: ConnectionPool) -> None:
    started = asyncio.Event()
    pids: list[int] = []

    async def long_statement() -> None:
        async with pool.acquire() as connection:
            pids.append(await connection.fetchval("SELECT pg_backend_pid()"))
            started.set()
            await connection.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(long_statement())
    await started.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with pool.acquire() as connection:  # a fresh one, not the one that was busy
        assert await connection.fetchval("SELECT pg_backend_pid()") != pids[0]


async def test_a_connection_given_back_inside_a_transaction_is_not_reused(
    pool: ConnectionPool,
) -> None:
    async with pool.acquire() as connection:
        pid = await connection.fetchval("SELECT pg_backend_pid()")
        await connection.execute("BEGIN")
        await connection.execute("CREATE TEMPORARY TABLE left_behind (n int)")
    async with pool.acquire() as connection:
        assert await connection.fetchval("SELECT pg_backend_pid()") != pid
        assert not connection.is_in_transaction()
        missing = "SELECT to_regclass('pg_temp.left_behind') IS NULL"
        assert await connection.fetchval(missing)


async def test_expired_connections_are_closed_and_replaced(pool: ConnectionPool) -> None:
    idle = await _backend(pool)
    async with pool.acquire() as connection:
        out = await connection.fetchval("SELECT pg_backend_pid()")
        pool.expire_connections()
        assert await connection.fetchval("SELECT 1") == 1  # still usable until given back
    assert connection.is_closed()
    assert await _backend(pool) not in (idle, out)


async def test_a_connection_the_server_closed_is_replaced(pool: ConnectionPool) -> None:
    async with pool.acquire() as connection:
        pid = await connection.fetchval("SELECT pg_backend_pid()")
        async with pool.acquire() as other:
            await other.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(Exception) as lost:
            await connection.fetchval("SELECT 1")
        assert connection_lost(lost.value)
    assert await _backend(pool) != pid


async def test_a_closed_pool_hands_out_nothing(pool: ConnectionPool) -> None:
    await _backend(pool)
    await pool.close()
    with pytest.raises(asyncpg.InterfaceError, match="closed"):
        await _backend(pool)
