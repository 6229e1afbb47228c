"""User values (saga inputs, step results) as JSON through msgspec: no pickle, ever."""

from __future__ import annotations

from typing import Any

import msgspec

from ._errors import PayloadError

_encoder = msgspec.json.Encoder(order="sorted")
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
"""A decoder per declared type: `msgspec.json.decode(type=...)` analyses a generic
type such as `dict[str, int]` again on every call (~3 us)."""


def encode_payload(value: object, what: str) -> bytes:
    """JSON bytes for `value`, keys sorted so equal values encode equally.

    Raises `PayloadError` if msgspec cannot serialize it.
    """
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise PayloadError(f"{what} is not msgspec-serializable: {exc}") from exc


def decode_payload(data: bytes, type_: Any, what: str) -> Any:
    """Decode JSON bytes as `type_`. Raises `PayloadError` on a mismatch."""
    try:
        return _decoder(type_).decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PayloadError(f"{what} does not match its declared type: {exc}") from exc


def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    try:
        return _decoders[type_]
    except KeyError:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
        return decoder
    except TypeError:  # an unhashable annotation: decode without caching
        return msgspec.json.Decoder(type_)
