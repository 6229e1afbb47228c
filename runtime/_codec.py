"""Encoding of persisted rows: snapshots and events as JSON through pre-built msgspec codecs."""

from __future__ import annotations

import msgspec

from saga import CorruptSagaError
from saga.engine import Event
from saga.store import SagaState

_encoder = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(SagaState)
_event_decoder = msgspec.json.Decoder(Event)


def encode_state(state: SagaState) -> str:
    """The snapshot as stored: a code saga's open calls only (`SagaState.stored`)."""
    return _encoder.encode(state.stored()).decode()


def encode_event(event: Event) -> str:
    return _encoder.encode(event).decode()


def decode_state(saga_id: str, data: str | bytes) -> SagaState:
    """Raises `CorruptSagaError` when the row cannot be decoded as a snapshot of `saga_id`."""
    try:
        state = _state_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptSagaError(saga_id, str(exc)) from exc
    if state.saga_id != saga_id:
        raise CorruptSagaError(saga_id, f"snapshot belongs to saga {state.saga_id!r}")
    return state


def decode_event(saga_id: str, data: str | bytes) -> Event:
    try:
        event: Event = _event_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptSagaError(saga_id, f"history: {exc}") from exc
    return event
