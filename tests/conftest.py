from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

logger = logging.getLogger("tests.pg")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Fail at once, naming them, when threads would keep the interpreter from exiting.

    Python joins every non-daemon thread before it exits: one left waiting (an
    anyio worker of an interrupted event loop once was) turned a green suite
    into a CI run that never ended.
    """
    deadline = time.monotonic() + 10  # a thread still finishing its work ends far sooner
    lingering = []
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            lingering.append(thread)
    if not lingering:
        return
    frames = sys._current_frames()
    for thread in lingering:
        print(f"\nthread {thread.name!r} would keep the process alive:", file=sys.stderr)
        frame = frames.get(thread.ident or -1)
        if frame is not None:
            traceback.print_stack(frame, file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(3)  # exiting normally would wait for those threads forever


@pytest.fixture
def anyio_backend() -> str:
    # aiosqlite runs on asyncio only.
    return "asyncio"


class _Databases:
    """Makes the tests' PostgreSQL databases ahead of use and drops them after, off the test's path.

    CREATE DATABASE copies and fsyncs a template (tenths of a second on a
    busy disk): worker threads keep the next databases ready while tests run,
    and drop used ones in the background. Each test still gets a new, empty
    database of its own.
    """

    AHEAD = 3

    def __init__(self, server: str) -> None:
        self.server = server
        self._workers = ThreadPoolExecutor(self.AHEAD, thread_name_prefix="pg-databases")
        self._ready: deque[Future[str]] = deque()
        self._drops: list[Future[str]] = []

    def take(self) -> Future[str]:
        while len(self._ready) < 1 + self.AHEAD:
            self._ready.append(self._workers.submit(self._run, "CREATE", None))
        return self._ready.popleft()

    def give_back(self, name: str) -> None:
        self._drops.append(self._workers.submit(self._run, "DROP", name))

    def close(self) -> None:
        while self._ready:
            future = self._ready.popleft()
            if not future.cancel() and future.exception() is None:
                self.give_back(future.result())
        for drop in self._drops:
            drop.exception()  # wait; a failure was logged
        self._workers.shutdown()

    def _run(self, verb: str, name: str | None) -> str:
        import asyncpg

        name = name or f"t_{uuid.uuid4().hex[:16]}"
        sql = f"CREATE DATABASE {name}"
        if verb == "DROP":
            sql = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"

        async def once() -> None:
            admin = await asyncpg.connect(self.server)
            try:
                await admin.execute(sql)
            except asyncpg.DuplicateDatabaseError:
                pass  # a retry after a lost reply: the name is ours alone
            finally:
                await admin.close()

        # A test may restart the server meanwhile: try again for a while.
        deadline = time.monotonic() + 30
        while True:
            try:
                asyncio.run(once())
                return name
            except (
                OSError,
                asyncpg.PostgresConnectionError,
                asyncpg.OperatorInterventionError,
                asyncpg.InterfaceError,
            ):
                if time.monotonic() > deadline:
                    if verb == "DROP":
                        logger.exception("could not drop test database %s", name)
                    raise
                time.sleep(0.2)


@pytest.fixture(scope="session")
def _pg_databases() -> Iterator[_Databases]:
    from tests.pg import server_dsn

    databases = _Databases(server_dsn())
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
async def pg_dsn(_pg_databases: _Databases) -> AsyncIterator[str]:
    """The DSN of a new, empty PostgreSQL database, dropped after the test."""
    from tests.pg import database_dsn

    name = await asyncio.wrap_future(_pg_databases.take())
    try:
        yield database_dsn(_pg_databases.server, name)
    finally:
        _pg_databases.give_back(name)
