"""Encoding of persisted rows: snapshots and events as JSON through pre-built msgspec codecs,
sealed by the runtime's payload codec when it has one (`runtime.codecs`).

A sealed column is `~` and the base64 of the codec's bytes: text in both stores, and
never JSON (no JSON text starts with `~`), so a database that holds plain rows from
before the codec was turned on reads both kinds.
"""

from __future__ import annotations

import base64
import binascii

import msgspec

from saga import CorruptSagaError
from saga.engine import Event
from saga.store import SagaState

from ._errors import CodecError
from .codecs import PayloadCodec, UnknownKeyError

_encoder = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(SagaState)
_event_decoder = msgspec.json.Decoder(Event)

SEALED = "~"
"""The first character of a column the payload codec wrote."""


def seal(data: bytes, codec: PayloadCodec | None) -> str:
    """A stored value's column: its JSON text, or sealed by `codec`."""
    if codec is None:
        return data.decode()
    return SEALED + base64.b64encode(codec.encode(data)).decode("ascii")


def is_sealed(column: object) -> bool:
    return isinstance(column, str) and column.startswith(SEALED)


def unseal(saga_id: str, column: str | bytes, codec: PayloadCodec | None, what: str) -> bytes:
    """A column's JSON bytes; `CodecError` if sealed and `codec` cannot open it."""
    if isinstance(column, bytes):
        if not column.startswith(b"~"):
            return column
        column = column.decode("ascii", "replace")
    if not column.startswith(SEALED):
        return column.encode()
    if codec is None:
        raise CodecError(saga_id, f"its {what} is encoded by a payload codec, and none was given")
    try:
        sealed = base64.b64decode(column[1:], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CodecError(saga_id, f"its {what} is not a sealed value: {exc}") from None
    try:
        return codec.decode(sealed)
    except Exception as exc:  # a codec's failure, whatever it is, is this saga's alone
        unknown_key = isinstance(exc, UnknownKeyError)
        raise CodecError(saga_id, f"its {what} cannot be decoded: {exc}", unknown_key) from exc


def readable_input(column: object, codec: PayloadCodec | None) -> bytes | None:
    """A stored input's JSON, for its tombstone's digest; None if it cannot be read here."""
    if not isinstance(column, str | bytes):
        return None
    try:
        return unseal("", column, codec, "input")
    except CorruptSagaError:
        return None


def encode_state(state: SagaState, codec: PayloadCodec | None = None) -> str:
    """The snapshot as stored: a code saga's open calls only (`SagaState.stored`)."""
    return seal(_encoder.encode(state.stored()), codec)


def encode_event(event: Event, codec: PayloadCodec | None = None) -> str:
    return seal(_encoder.encode(event), codec)


def decode_state(saga_id: str, data: str | bytes, codec: PayloadCodec | None = None) -> SagaState:
    """Raises `CorruptSagaError` when the row cannot be decoded as a snapshot of `saga_id`
    (`CodecError`, one, when the codec cannot open it)."""
    raw = unseal(saga_id, data, codec, "snapshot")
    try:
        state = _state_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptSagaError(saga_id, str(exc)) from exc
    if state.saga_id != saga_id:
        raise CorruptSagaError(saga_id, f"snapshot belongs to saga {state.saga_id!r}")
    return state


def decode_event(saga_id: str, data: str | bytes, codec: PayloadCodec | None = None) -> Event:
    raw = unseal(saga_id, data, codec, "history")
    try:
        event: Event = _event_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptSagaError(saga_id, f"history: {exc}") from exc
    return event
