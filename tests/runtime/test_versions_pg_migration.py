"""PostgreSQL migration 2 fills `version` from the top-level field of each snapshot."""

from __future__ import annotations

from typing import Any

import asyncpg

from runtime import Runtime
from saga import Saga, SagaStatus, Step, StepContext, WaitForSignal
from tests.runtime.long_running_helpers import until_status


async def echo_dict(ctx: StepContext, n: Any) -> dict[str, int]:
    return {"definition_version": 7}  # a user's value that happens to use the word


LISTED = Saga("refund", [Step("find", echo_dict), WaitForSignal("approved")], version=1)
ODD_V3 = Saga('re"fund', [Step("find", echo_dict), WaitForSignal("approved")], version=3)


async def test_migration_2_takes_the_version_of_the_snapshot_not_of_a_step_result(
    pg_dsn: str,
) -> None:
    async with Runtime(pg_dsn, sagas=[LISTED, ODD_V3]) as rt:
        await rt.spawn(LISTED, 1, saga_id="r")
        await rt.spawn(ODD_V3, 1, saga_id='o"dd\\')  # quotes and backslashes in the text
        await until_status(rt, "r", SagaStatus.WAITING)
        await until_status(rt, 'o"dd\\', SagaStatus.WAITING)
    conn = await asyncpg.connect(pg_dsn, server_settings={"search_path": "sagaloop"})
    try:  # back to schema 1, as a database from before versions
        await conn.execute("DROP TABLE tombstones")  # migration 3
        await conn.execute("DROP INDEX sagas_by_age")
        await conn.execute("ALTER TABLE sagas DROP COLUMN parent_id")
        await conn.execute("ALTER TABLE sagas DROP COLUMN version")
        await conn.execute("ALTER TABLE runtimes DROP COLUMN sagas")
        await conn.execute("DELETE FROM schema_version WHERE version >= 2")
    finally:
        await conn.close()
    async with Runtime(pg_dsn, sagas=[LISTED, ODD_V3]) as rt:
        listed = {item.saga_id: item.version for item in (await rt.list()).items}
        assert (await rt.status("r")).version == 1
        assert listed == {"r": 1, 'o"dd\\': 3}
