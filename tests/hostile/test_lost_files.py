"""The `-wal` file deleted under a running runtime: it stops acknowledging at once, with
a clear error, and after a SIGKILL every saga it did acknowledge is in the database."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from runtime import Runtime
from saga import StoreError
from tests.child_process import open_child

from .wal_child import PARKED, READY

BEFORE, AFTER = 20, 5


async def test_a_deleted_wal_stops_acknowledgements_and_loses_none(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    command = [sys.executable, "-m", "tests.hostile.wal_child", "--db", str(db)]
    command += ["--before", str(BEFORE), "--after", str(AFTER)]
    async with open_child(command, tmp_path / "child.stderr", timeout=30) as child:
        await child.expect(READY)
        assert await child.kill()
    acknowledged = {line.split()[1] for line in child.seen if line.startswith("ACK ")}
    refused = [line for line in child.seen if line.startswith("REFUSED ")]
    assert acknowledged == {f"before-{n}" for n in range(BEFORE)}
    assert len(refused) == AFTER
    assert all("were deleted or replaced" in line for line in refused)
    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT saga_id FROM sagas")}
    assert acknowledged <= stored  # checkpointed when the loss was seen
    async with Runtime(db, sagas=[PARKED]) as rt:  # and the database opens again
        for saga_id in acknowledged:
            await rt.status(saga_id)


async def test_a_replaced_database_file_is_refused_in_process(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    async with Runtime(db, sagas=[PARKED]) as rt:
        await rt.spawn(PARKED, None, saga_id="kept")
        (tmp_path / "sagas.db-wal").rename(tmp_path / "moved-wal")
        (tmp_path / "sagas.db-wal").write_bytes(b"")  # another file at the same path
        for saga_id in ("refused", "refused-again"):
            with pytest.raises(StoreError, match="deleted or replaced"):
                await rt.spawn(PARKED, None, saga_id=saga_id)
