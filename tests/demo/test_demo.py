"""The demo: its code sagas behave as the step-list checkout does, and `python -m demo` runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from demo.checkout import FakeServices, order
from demo.code_checkout import build_auto_checkout, build_manual_checkout
from runtime import Runtime, SagaCompensated
from tests.child_process import REPO


@pytest.mark.parametrize("build", [build_manual_checkout, build_auto_checkout])
async def test_both_code_checkouts_undo_what_they_did_when_stock_runs_out(
    tmp_path: Path, build: object
) -> None:
    services = FakeServices()
    saga = build(services)  # type: ignore[operator]
    async with Runtime(tmp_path / "db", sagas=[saga]) as rt:
        with pytest.raises(SagaCompensated) as caught:
            await (await rt.spawn(saga, order("o", ("chair", 1)), saga_id="o")).result(timeout=10)
        assert caught.value.step == "reserve_inventory"
        assert (
            await (await rt.spawn(saga, order("p", ("book", 1)), saga_id="p")).result(timeout=10)
            == "ch_p"
        )
    assert services.orders == {"o:create_order": "cancelled", "p:create_order": "created"}
    assert list(services.charges) == ["p:charge_payment"]  # o's charge was refunded
    assert services.stock["book"] == 9


def test_the_demo_runs_every_scenario_to_its_end() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "demo"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for scenario in range(1, 8):
        assert f"=== {scenario}. " in out
    assert "SIGKILLed (exit -9)" in out
    assert "result: completed -> ch_order-2004" in out  # the code saga resumed after the kill
    assert out.count("side effects: orders: created order-2003; payments: charged 42.00") == 2
