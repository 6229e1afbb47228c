"""Payload codecs at rest: every user value sealed, key rotation, a missing or wrong key,
altered ciphertext, databases written partly before the codec (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from runtime import CodecError, PayloadError, Runtime, SagaCompensated, SagaStatus
from runtime.codecs import AesGcm, Compression, PayloadCodec, chain, load_key_file
from saga import NonRetryableError, RetryPolicy, Saga, SagaContext, StepContext
from tests.runtime.long_running_helpers import WAIT, until, until_status

MARK = "PLAINTEXT-MARKER-7f3a"
K1, K2 = os.urandom(32), os.urandom(32)


def codec(*ids: str, active: str | None = None) -> PayloadCodec:
    keys = {"k1": K1, "k2": K2}
    return chain(Compression(min_size=0), AesGcm({i: keys[i] for i in ids}, active or ids[-1]))


async def remember(ctx: StepContext, note: str) -> str:
    return f"{note} / result {MARK}"


async def refuse(ctx: StepContext, note: str) -> str:
    raise NonRetryableError(f"declined: {MARK}")


async def forget(ctx: StepContext, note: str, result: str) -> None:
    return None


async def body(ctx: SagaContext, order: dict[str, Any]) -> str:
    note = await ctx.step("remember", remember, order["note"], compensate=forget)
    if order.get("wait"):
        signal = await ctx.wait_for_signal("approve")
        note += f" {signal}"
    if order.get("fail"):
        await ctx.step("refuse", refuse, note, retry=RetryPolicy(maximum_attempts=1))
    return f"output {note}"


ORDER = Saga("order", body)


async def raw_text(database: str) -> str:
    """Everything the database holds, as text: the files' bytes, or every table's rows."""
    if database.startswith("postgresql://"):
        conn = await asyncpg.connect(database, server_settings={"search_path": "sagaloop"})
        try:
            parts = []
            for table in ("sagas", "history", "inbox", "tombstones"):
                parts += [str(tuple(row)) for row in await conn.fetch(f"SELECT * FROM {table}")]
            return "\n".join(parts)
        finally:
            await conn.close()
    return "".join(
        path.read_bytes().decode("latin-1")
        for path in (Path(database), Path(database + "-wal"))
        if path.exists()
    )


async def fill(rt: Runtime) -> None:
    """Values of every kind at rest: inputs, results, outputs, errors, signals, inbox."""
    done = await rt.spawn(ORDER, {"note": f"input {MARK}"}, saga_id="done")
    assert MARK in await done.result(timeout=WAIT)
    failed = await rt.spawn(ORDER, {"note": f"input {MARK}", "fail": True}, saga_id="failed")
    with pytest.raises(SagaCompensated, match=MARK):
        await failed.result(timeout=WAIT)
    await rt.spawn(ORDER, {"note": f"input {MARK}", "wait": True}, saga_id="waiting")
    await until_status(rt, "waiting", SagaStatus.WAITING)
    await rt.signal("waiting", "approve", f"signal {MARK}")
    assert MARK in await rt.handle("waiting").result(timeout=WAIT)
    await rt.spawn(ORDER, {"note": f"input {MARK}", "wait": True}, saga_id="parked")
    await until_status(rt, "parked", SagaStatus.WAITING)


async def test_every_user_value_at_rest_is_sealed(database: str) -> None:
    async with Runtime(database, sagas=[ORDER], codec=codec("k1")) as rt:
        await fill(rt)
        info = await rt.status("done")  # the runtime reads it back in clear
        assert MARK in json.dumps(info.input)
        listed = {item.saga_id: item.status for item in (await rt.list()).items}
        assert listed["parked"] is SagaStatus.WAITING  # ids, names, statuses stay clear
    assert MARK not in await raw_text(database)


async def test_the_marker_scan_finds_plaintext_without_a_codec(database: str) -> None:
    """The control: the same scan sees every kind of value when nothing seals them."""
    async with Runtime(database, sagas=[ORDER]) as rt:
        await fill(rt)
    text = await raw_text(database)
    for kind in (f"input {MARK}", f"result {MARK}", f"declined: {MARK}", f"signal {MARK}"):
        assert kind in text, kind
    assert f"output input {MARK}" in text


async def test_rotation_old_keys_decrypt_the_active_key_encrypts(database: str) -> None:
    async with Runtime(database, sagas=[ORDER], codec=codec("k1")) as rt:
        await rt.spawn(ORDER, {"note": "old", "wait": True}, saga_id="old")
        await until_status(rt, "old", SagaStatus.WAITING)
    async with Runtime(database, sagas=[ORDER], codec=codec("k1", "k2")) as rt:
        await rt.spawn(ORDER, {"note": "new"}, saga_id="new")
        assert await rt.handle("new").result(timeout=WAIT) == "output new / result " + MARK
        await rt.signal("old", "approve", "yes")
        assert (await rt.handle("old").result(timeout=WAIT)).startswith("output old")
    assert key_ids_of(await sealed_inputs(database)) == {"old": "k1", "new": "k2"}


async def sealed_inputs(database: str) -> dict[str, str]:
    if database.startswith("postgresql://"):
        conn = await asyncpg.connect(database, server_settings={"search_path": "sagaloop"})
        try:
            rows = await conn.fetch("SELECT saga_id, input FROM sagas")
        finally:
            await conn.close()
        return {row[0]: row[1] for row in rows}
    with sqlite3.connect(database) as lite:
        return dict(lite.execute("SELECT saga_id, input FROM sagas").fetchall())


def key_ids_of(columns: dict[str, str]) -> dict[str, str]:
    ids = {}
    for saga_id, column in columns.items():
        assert column.startswith("~"), column
        sealed = base64.b64decode(column[1:])
        assert sealed[:1] == b"a"  # AES-GCM outermost (compressed first, then encrypted)
        ids[saga_id] = sealed[2 : 2 + sealed[1]].decode()
    return ids


async def test_a_missing_key_suspends_that_saga_and_resumes_once_given(database: str) -> None:
    async with Runtime(database, sagas=[ORDER], codec=codec("k1")) as rt:
        await rt.spawn(ORDER, {"note": "under k1", "wait": True}, saga_id="k1-saga")
        await until_status(rt, "k1-saga", SagaStatus.WAITING)
    async with Runtime(database, sagas=[ORDER], codec=codec("k2")) as rt:
        with pytest.raises(CodecError, match="'k1'"):
            await rt.signal("k1-saga", "approve", "yes")  # not run on what it cannot read
        blind = await rt.status("k1-saga")  # its clear columns, nothing else
        assert blind.encrypted
        assert blind.input == "<encrypted>"
        assert blind.status is SagaStatus.WAITING
        assert blind.waiting_for == "approve"
        assert await (await rt.spawn(ORDER, {"note": "k2"}, saga_id="k2-saga")).result(timeout=WAIT)
        summary = {item.saga_id: item.status for item in (await rt.list()).items}
        assert summary["k2-saga"] is SagaStatus.COMPLETED
    async with Runtime(database, sagas=[ORDER], codec=codec("k1", "k2")) as rt:
        await rt.signal("k1-saga", "approve", "at last")
        assert "at last" in await rt.handle("k1-saga").result(timeout=WAIT)


async def test_a_running_saga_under_an_unknown_key_is_suspended_with_the_reason(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "s.db")
    async with Runtime(db, sagas=[ORDER], codec=codec("k1")) as rt:
        await rt.spawn(ORDER, {"note": "x", "wait": True}, saga_id="mid")
        await until_status(rt, "mid", SagaStatus.WAITING)
    with sqlite3.connect(db) as conn:  # as if it crashed with a step in flight
        conn.execute("UPDATE sagas SET runnable = 1 WHERE saga_id = 'mid'")
    async with Runtime(db, sagas=[ORDER], codec=codec("k2")) as rt:

        async def suspended() -> bool:
            rows = (await rt.list(status=SagaStatus.SUSPENDED)).items
            return [row.saga_id for row in rows] == ["mid"]

        await until(suspended, what="the saga under an unknown key to be suspended")
        reason = await rt.store.quarantine_reason("mid")  # type: ignore[attr-defined]
        assert "k1" in reason
        assert await (await rt.spawn(ORDER, {"note": "y"}, saga_id="other")).result(timeout=WAIT)


async def test_altered_ciphertext_harms_only_its_own_saga(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    async with Runtime(db, sagas=[ORDER], codec=codec("k1")) as rt:
        for name in ("victim", "bystander"):
            await rt.spawn(ORDER, {"note": name, "wait": True}, saga_id=name)
            await until_status(rt, name, SagaStatus.WAITING)
    with sqlite3.connect(db) as conn:
        (column,) = conn.execute("SELECT snapshot FROM sagas WHERE saga_id='victim'").fetchone()
        sealed = bytearray(base64.b64decode(column[1:]))
        sealed[-1] ^= 0x01  # one bit of the authentication tag
        altered = "~" + base64.b64encode(bytes(sealed)).decode()
        conn.execute("UPDATE sagas SET snapshot=? WHERE saga_id='victim'", (altered,))
    async with Runtime(db, sagas=[ORDER], codec=codec("k1")) as rt:
        with pytest.raises(CodecError, match="does not decrypt"):
            await rt.status("victim")
        await rt.signal("bystander", "approve", "fine")
        assert "fine" in await rt.handle("bystander").result(timeout=WAIT)


async def test_a_database_from_before_the_codec_keeps_working(database: str) -> None:
    async with Runtime(database, sagas=[ORDER]) as rt:
        await rt.spawn(ORDER, {"note": "plain", "wait": True}, saga_id="plain")
        await until_status(rt, "plain", SagaStatus.WAITING)
    async with Runtime(database, sagas=[ORDER], codec=codec("k1")) as rt:
        await rt.spawn(ORDER, {"note": "sealed"}, saga_id="sealed")
        assert (await rt.handle("sealed").result(timeout=WAIT)).startswith("output sealed")
        await rt.signal("plain", "approve", "ok")
        assert (await rt.handle("plain").result(timeout=WAIT)).startswith("output plain")
    inputs = await sealed_inputs(database)
    assert not inputs["plain"].startswith("~")  # written before: left as it was
    assert inputs["sealed"].startswith("~")


def test_the_cli_shows_encrypted_without_the_key_and_decodes_with_it(tmp_path: Path) -> None:
    import anyio

    db = tmp_path / "s.db"

    async def make() -> None:
        async with Runtime(db, sagas=[ORDER], codec=codec("k1")) as rt:
            await (await rt.spawn(ORDER, {"note": f"input {MARK}"}, saga_id="s")).result()

    anyio.run(make)
    key_file = tmp_path / "keys.json"
    key_file.write_text(
        json.dumps(
            {"active": "k1", "keys": {"k1": base64.b64encode(K1).decode()}, "compress": True}
        )
    )

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "runtime", *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    blind = cli("show", str(db), "s")
    assert "input: <encrypted>" in blind
    assert MARK not in blind
    seeing = cli("show", str(db), "s", "--key-file", str(key_file))
    assert f'input: {{"note":"input {MARK}"}}' in seeing
    assert "<encrypted>" not in seeing
    assert "s " in cli("list", str(db))  # listing needs no key


def test_codecs_round_trip_and_refuse_what_they_cannot_read() -> None:
    data = json.dumps({"n": list(range(500))}).encode()
    packed = Compression().encode(data)
    assert len(packed) < len(data) // 2
    assert Compression().decode(packed) == data
    assert Compression().decode(Compression().encode(b"{}")) == b"{}"  # short: kept as is
    k1 = AesGcm({"k1": K1}, "k1")
    both = AesGcm({"k1": K1, "k2": K2}, "k2")
    assert both.decode(k1.encode(data)) == data  # an old key still decrypts
    assert k1.encode(data) != k1.encode(data)  # a fresh nonce each time
    with pytest.raises(PayloadError, match=r"'k2'.*not among"):
        k1.decode(both.encode(data))
    tampered = bytearray(k1.encode(data))
    tampered[20] ^= 0xFF
    with pytest.raises(PayloadError, match="does not decrypt"):
        k1.decode(bytes(tampered))
    with pytest.raises(ValueError, match="active key"):
        AesGcm({"k1": K1}, "k9")
    with pytest.raises(ValueError, match="32 bytes"):
        AesGcm({"k1": b"short"}, "k1")
    with pytest.raises(ValueError, match="level"):
        Compression(level=99)
    with pytest.raises(PayloadError, match="not a value Compression wrote"):
        Compression().decode(b"?junk")
    with pytest.raises(ValueError, match="at least one"):
        chain()
    assert "k1" in repr(k1)
    assert K1.hex() not in repr(k1)


def test_a_key_file_that_is_not_one_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"keys": {}}')
    with pytest.raises(ValueError, match="not a key file"):
        load_key_file(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"active": "k1", "keys": {"k1": base64.b64encode(K1).decode()}}))
    assert load_key_file(good).decode(AesGcm({"k1": K1}, "k1").encode(b"x")) == b"x"


def test_the_runtime_refuses_a_codec_that_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="encode"):
        Runtime(tmp_path / "s.db", sagas=[ORDER], codec=object())  # type: ignore[arg-type]
