"""The one driver of the state machine: every change of a saga's state goes through here.

`decide` computes a transition, asking a code saga's body for its reaction
when the machine needs one; `commit` also persists it (the snapshot and the
event, atomically, before anything acts on it). Around them, the lifecycle
of a saga as the runtime sees it: `begin` (a spawn's first transition),
`resume` and `suspend` (an operator, an escalation), `restore` (a stored
snapshot completed from its history), `report` (what a child tells its
parent when it ends) and `replay` (a body checked against its history).
Nothing else calls `transition`, except the tools that replay a history
(`restore`'s fold, the timeline).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec
from msgspec.structs import replace

from ._body import BodyRun
from ._commands import Finish
from ._definition import Saga
from ._errors import CorruptSagaError, InvalidTransitionError, NonDeterminismError
from ._events import Event, Resumed, SagaStarted, Suspended
from ._hosting import FreshStart
from ._machine import continue_with, initial_state, transition
from ._model import NULL, ParentRef, SagaState
from ._payload import decode_payload
from ._store import HistoryEntry, InboxItem, Store, StoredSaga
from ._transitions import Transition


def decide(
    saga: Saga[Any, Any], state: SagaState, event: Event, run: BodyRun | None
) -> tuple[Transition, Event]:
    """The transition of `state` by `event`, with the body's reactions folded into the event
    when the machine needs them. Returns the transition and the event to record."""
    outcome = transition(saga, state, event)
    if saga.body is None or not outcome.needs_reaction:
        return outcome, event
    if run is None:
        raise InvalidTransitionError(
            f"saga {state.saga_id!r}: a code saga's transition needs its body's reaction"
        )
    reactions = list(getattr(event, "then", ()))
    while outcome.needs_reaction:
        reaction = run.react(outcome.state)
        reactions.append(reaction)
        # As `transition(saga, state, event)` with the reactions so far, without the work
        # it already did (the replay tools apply the recorded event in one go).
        outcome = continue_with(saga, outcome.state, event, reaction)
    run.state = outcome.state
    return outcome, replace(event, then=tuple(reactions))


async def commit(
    store: Store,
    saga: Saga[Any, Any],
    state: SagaState,
    event: Event,
    run: BodyRun | None,
    *,
    consumed: int | None = None,
) -> Transition:
    """`decide`, then persist the new snapshot and the event (unless nothing changed).

    Returns once durable. A child saga that ends tells its parent in the same
    transaction (`report`). Raises what `Store.save` raises.
    """
    if saga.body is None:  # a step list never needs a body's reaction: the hot path
        outcome = transition(saga, state, event)
    else:
        outcome, event = decide(saga, state, event, run)
    if outcome.state is not state:
        deliver = None if outcome.state.parent is None else report(outcome)
        if deliver is None:
            await store.save(outcome.state, event, consumed=consumed)
        else:
            await store.save(outcome.state, event, consumed=consumed, deliver=deliver)
    return outcome


class ChildReport(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a child saga tells its parent when it ends (an inbox item's payload)."""

    step: int
    status: str
    result: msgspec.Raw = NULL
    error: Any = None


_report_encoder = msgspec.json.Encoder()


def report(outcome: Transition) -> InboxItem | None:
    """The inbox item a child saga's transition delivers to its parent, if it ends one."""
    state = outcome.state
    parent = state.parent
    if parent is None or not any(type(command) is Finish for command in outcome.commands):
        return None
    if not state.status.is_terminal:
        return None
    failure = None
    if state.failure is not None:
        failure = msgspec.to_builtins(state.failure)
    payload = ChildReport(
        step=parent.position,
        status=state.status.value,
        result=state.output,
        error=failure,
    )
    return InboxItem(
        id=0,
        saga_id=parent.saga_id,
        kind="child",
        name=state.saga_id,
        payload=_report_encoder.encode(payload),
        key=f"{state.saga_id}:{state.status.value}:{state.seq}",
        at=state.updated_at,
    )


class Begun(NamedTuple):
    """A new saga, computed but not yet stored: what `Store.create` takes, and the actor's start."""

    stored: StoredSaga
    event: SagaStarted
    fresh: FreshStart


def begin(
    saga: Saga[Any, Any],
    saga_id: str,
    input_data: bytes,
    decoded: Any,
    at: float,
    *,
    now: Callable[[], float],
    rng: random.Random,
    parent: ParentRef | None = None,
) -> Begun:
    """A new saga's first transition (a code saga's body runs up to its first calls)."""
    state = initial_state(saga, saga_id)
    run = (
        BodyRun(saga, saga_id, decoded, state, now=now, rng=rng) if saga.body is not None else None
    )
    outcome, event = decide(saga, state, SagaStarted(at=at, parent=parent), run)
    assert isinstance(event, SagaStarted)
    stored = StoredSaga(saga_id, saga.name, input_data, outcome.state)
    return Begun(stored, event, FreshStart(outcome, input_data, decoded=decoded, run=run))


def check_fits(saga: Saga[Any, Any], state: SagaState) -> None:
    """Raises `CorruptSagaError` for a snapshot that does not fit its definition."""
    if saga.body is None and len(state.steps) != len(saga.steps):
        raise CorruptSagaError(
            state.saga_id,
            f"its snapshot has {len(state.steps)} steps; the definition "
            f"{saga.name!r} has {len(saga.steps)}",
        )
    if saga.body is not None and not state.partial and not state.is_code and state.steps:
        raise CorruptSagaError(state.saga_id, f"a step list's snapshot for code saga {saga.name!r}")


def fold(saga: Saga[Any, Any], saga_id: str, history: Sequence[HistoryEntry]) -> SagaState:
    """The state a history leads to, replayed through the machine from the start.

    Raises `CorruptSagaError` if the history has gaps or an event that does not apply.
    """
    state = initial_state(saga, saga_id)
    for entry in history:
        try:
            state = transition(saga, state, entry.event).state
        except InvalidTransitionError as exc:
            raise CorruptSagaError(saga_id, f"history #{entry.seq} does not apply: {exc}") from exc
        if state.seq != entry.seq:
            raise CorruptSagaError(saga_id, f"history #{entry.seq} leads to snapshot #{state.seq}")
    return state


async def restore(store: Store, saga: Saga[Any, Any], saga_id: str) -> StoredSaga:
    """The saga as stored, its state complete: a code saga's partial snapshot is completed
    from its history (and must agree with it). Raises `SagaNotFound`, `CorruptSagaError`."""
    return await _complete(store, saga, await store.load(saga_id))


async def restore_on_its_version(
    store: Store, definition_of: Callable[[str, int], Saga[Any, Any] | None], saga_id: str
) -> tuple[Saga[Any, Any] | None, StoredSaga]:
    """As `restore`, with the definition of the saga's own name and version (from its
    snapshot): (None, the saga as stored) when `definition_of` has none."""
    stored = await store.load(saga_id)
    saga = definition_of(stored.saga_name, stored.state.definition_version)
    if saga is None:
        return None, stored
    return saga, await _complete(store, saga, stored)


async def _complete(store: Store, saga: Saga[Any, Any], stored: StoredSaga) -> StoredSaga:
    history = await store.history(stored.saga_id) if stored.state.partial else ()
    state = complete(saga, stored, history)
    return stored if state is stored.state else replace(stored, state=state)


def complete(
    saga: Saga[Any, Any], stored: StoredSaga, history: Sequence[HistoryEntry]
) -> SagaState:
    """`stored`'s state, complete: a code saga's partial snapshot folded from `history` up to
    it (which must lead to exactly that snapshot), a full one checked against `saga`.
    Raises `CorruptSagaError`."""
    if not stored.state.partial:
        check_fits(saga, stored.state)
        return stored.state
    upto = [entry for entry in history if entry.seq <= stored.state.seq]
    state = fold(saga, stored.saga_id, upto)
    if state.seq != stored.state.seq or state.stored() != stored.state:
        raise CorruptSagaError(
            stored.saga_id, f"its history leads to snapshot #{state.seq}, not the stored one"
        )
    return state


async def resume(store: Store, saga: Saga[Any, Any], stored: StoredSaga, at: float) -> FreshStart:
    """Resume a suspended saga (`stored`, restored): persist `Resumed`, return its start.

    Raises `InvalidTransitionError` if it is not suspended, what `Store.save` raises."""
    outcome = await commit(store, saga, stored.state, Resumed(at=at), None)
    return FreshStart(outcome, stored.input, resumed=True)


async def suspend(store: Store, saga: Saga[Any, Any], saga_id: str, reason: str, at: float) -> None:
    """Park a live saga for an operator. Raises `InvalidTransitionError` if it is not live,
    `CorruptSagaError`, what `Store.save` raises."""
    stored = await restore(store, saga, saga_id)
    await commit(store, saga, stored.state, Suspended(at=at, reason=reason), None)


def replay(
    saga: Saga[Any, Any], saga_id: str, input_data: bytes, state: SagaState, *, at: float = 0.0
) -> NonDeterminismError | None:
    """Run a code saga's body against its recorded calls (`state` complete) without running
    any action: the `NonDeterminismError` the body would hit now, or None if it follows
    its history. `at` is what a fresh `ctx.now()` returns; nothing is written."""
    if saga.body is None:
        return None  # a step list cannot diverge from its own history
    saga_input = decode_payload(input_data, saga.input_type, "input of saga", saga_id)
    run = BodyRun(saga, saga_id, saga_input, state, now=lambda: at, rng=random.Random(0))
    try:
        run.start()
    finally:
        run.close()
    return run.diverged
