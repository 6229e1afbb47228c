"""User values (saga inputs, step results) as JSON through msgspec: no pickle, ever."""

from __future__ import annotations

from typing import Any

import msgspec

from ._errors import PayloadError

_encoder = msgspec.json.Encoder(order="sorted")
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
"""A decoder per declared type: `msgspec.json.decode(type=...)` analyses a generic
type such as `dict[str, int]` again on every call (~3 us)."""


def encode_payload(value: object, what: str, name: str | None = None) -> bytes:
    """JSON bytes for `value`, keys sorted so equal values encode equally.

    Raises `PayloadError` if msgspec cannot serialize it; its message names the
    value as `what`, followed by `name` quoted when given (formatted only then:
    every step result passes through here).
    """
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise PayloadError(f"{_named(what, name)} is not msgspec-serializable: {exc}") from exc


def decode_payload(data: bytes, type_: Any, what: str, name: str | None = None) -> Any:
    """Decode JSON bytes as `type_`. Raises `PayloadError` on a mismatch (`what`,
    `name`: as for `encode_payload`)."""
    try:
        return _decoder(type_).decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        message = f"{_named(what, name)} does not match its declared type: {exc}"
        raise PayloadError(message) from exc


def _named(what: str, name: str | None) -> str:
    return what if name is None else f"{what} {name!r}"


def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    try:
        return _decoders[type_]
    except KeyError:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
        return decoder
    except TypeError:  # an unhashable annotation: decode without caching
        return msgspec.json.Decoder(type_)
