"""The writes both stores batch, and how a stored row becomes a `StoredSaga`.

Each op carries its own outcome (`existing`, `accepted`, `error`): one batch
commits many ops, and a refusal of one does not fail the others. Ops are
msgspec Structs: every transition makes one, and they build faster than
dataclasses.
"""

from __future__ import annotations

import msgspec

from saga import CorruptSagaError
from saga.engine import Event
from saga.store import InboxItem, SagaState, StoredSaga

from ._codec import decode_state, encode_state, seal, unseal
from .codecs import PayloadCodec


class Create(msgspec.Struct, eq=False):
    """Insert a new saga with its first event; `existing` is set if the id was taken."""

    saga: StoredSaga
    event: Event
    existing: StoredSaga | None = None
    error: Exception | None = None


class Save(msgspec.Struct, eq=False):
    """Write one transition: the new snapshot, its event, the inbox item it consumed."""

    state: SagaState
    event: Event
    consumed: int | None = None
    epoch: int = 0
    """The epoch the writer holds (shared stores fence on it)."""
    error: Exception | None = None
    deliver: InboxItem | None = None
    """An inbox item for another saga, written with this transition (a child's report)."""


class Deliver(msgspec.Struct, eq=False):
    """Put an item in a live saga's inbox; `accepted` is False if it was not live or the
    item's key was there already."""

    item: InboxItem
    accepted: bool = False
    error: Exception | None = None


def new_saga_row(op: Create, codec: PayloadCodec | None = None) -> tuple[object, ...]:
    """The `sagas` row of a new saga: saga_id, saga_name, status, seq, input, snapshot,
    wake_at, runnable, waiting_for, created_at, updated_at, version, parent_id."""
    saga, state = op.saga, op.saga.state
    return (
        saga.saga_id,
        saga.saga_name,
        state.status.value,
        state.seq,
        seal(saga.input, codec),
        encode_state(state, codec),
        state.wake_at,
        state.in_flight,
        state.waiting_for,
        state.started_at or op.event.at,
        state.updated_at or op.event.at,
        state.definition_version,
        None if state.parent is None else state.parent.saga_id,
    )


def stored_saga(
    saga_id: object,
    saga_name: object,
    input_text: object,
    snapshot: object,
    seq: object = None,
    codec: PayloadCodec | None = None,
) -> StoredSaga:
    """A row as a `StoredSaga`; raises `CorruptSagaError` when it cannot be decoded,
    or when the snapshot is not the row's (`seq`, `saga_name` differ)."""
    sid = str(saga_id)
    if not isinstance(input_text, str | bytes):
        raise CorruptSagaError(sid, "input column is not JSON text")
    if not isinstance(snapshot, str | bytes):
        raise CorruptSagaError(sid, "snapshot column is not JSON text")
    data = unseal(sid, input_text, codec, "input")
    state = decode_state(sid, snapshot, codec)
    if seq is not None and state.seq != seq:
        raise CorruptSagaError(sid, f"snapshot #{state.seq} in a row at #{seq}")
    if state.saga_name != saga_name:
        raise CorruptSagaError(
            sid, f"snapshot of a {state.saga_name!r} saga in a {saga_name!r} row"
        )
    return StoredSaga(sid, str(saga_name), data, state)
