"""Callers caught by the end of a runtime: abandoned (its scope cancelled) or left cleanly.

An application's request handlers run outside the runtime's own scope; when
the runtime goes away under them, a call into it must end, with a typed
error. Regression tests for bugs this suite found (a caller waiting forever;
the actor kernel's bare RuntimeError).
"""

from __future__ import annotations

from pathlib import Path

import anyio

from runtime import Runtime, RuntimeNotRunningError, StoreError

from .checkout import HAPPY, make_order
from .invariants import read_store
from .rig import Rig


async def spawn_as_the_runtime_ends(rig: Rig, *, abandon: bool, turns: int) -> list[object]:
    """Start a handler that spawns, then end the runtime; what the spawn did, if it ended."""
    outcome: list[object] = []
    done = anyio.Event()
    async with anyio.create_task_group() as app:
        with anyio.CancelScope() as scope:
            async with Runtime(rig.db, sagas=[rig.saga]) as rt:

                async def handler() -> None:
                    try:
                        await rt.spawn(rig.saga, make_order("order-1", HAPPY), saga_id="order-1")
                        outcome.append("returned")
                    except Exception as exc:
                        outcome.append(exc)
                    finally:
                        done.set()

                app.start_soon(handler)
                for _ in range(turns):
                    await anyio.lowlevel.checkpoint()
                if abandon:
                    scope.cancel()
                    await anyio.sleep_forever()
        with anyio.move_on_after(1.0):
            await done.wait()
        app.cancel_scope.cancel()  # a handler still waiting would wait forever
    return outcome


async def test_a_write_queued_as_the_runtime_is_abandoned_fails_instead_of_hanging(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    outcome = await spawn_as_the_runtime_ends(rig, abandon=True, turns=0)
    assert outcome, "the spawn never returned nor raised"
    assert isinstance(outcome[0], StoreError | RuntimeNotRunningError), outcome


async def test_a_spawn_racing_a_clean_exit_raises_a_typed_error(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    outcome = await spawn_as_the_runtime_ends(rig, abandon=False, turns=1)
    assert outcome, "the spawn never returned nor raised"
    assert "order-1" in read_store(rig.db)  # the start committed: it runs at the next start
    assert outcome[0] == "returned" or isinstance(outcome[0], RuntimeNotRunningError), outcome
