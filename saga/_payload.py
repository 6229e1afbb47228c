"""User values (saga inputs, step results) as JSON through msgspec: no pickle, ever.

JSON is stricter than Python: no NaN or infinity (msgspec would write them as
null, silently changing the value), no lone surrogates, bounded nesting. Every
user value is checked here once, before anything durable holds it, so a bad
value is that value's `PayloadError` and never another saga's failed write.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from ._errors import PayloadError

_encoder = msgspec.json.Encoder(order="sorted")
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
"""A decoder per declared type: `msgspec.json.decode(type=...)` analyses a generic
type such as `dict[str, int]` again on every call (~3 us)."""
_validator = msgspec.json.Decoder(msgspec.Raw)
"""Reads JSON through without building it (3-4x faster than decoding it), failing as a full
decode would: on invalid JSON and on nesting too deep to read back."""


def encode_payload(
    value: object, what: str, name: str | None = None, *, decoded_next: bool = False
) -> bytes:
    """JSON bytes for `value`, keys sorted so equal values encode equally.

    Raises `PayloadError` if msgspec cannot serialize it, if it holds NaN or
    an infinity, a string with a lone surrogate, raw JSON that is not valid,
    or nesting too deep to read back; the message names the value as `what`,
    followed by `name` quoted when given (formatted only then: every step
    result passes through here). `decoded_next`: the caller decodes the bytes
    at once (with `decode_payload`), which checks raw JSON anyway.
    """
    try:
        data = _encoder.encode(value)
    except RecursionError as exc:
        raise PayloadError(f"{_named(what, name)} is nested too deeply (or holds a cycle)") from exc
    except UnicodeEncodeError as exc:
        raise PayloadError(
            f"{_named(what, name)} holds a string that is not valid Unicode: {exc}"
        ) from exc
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise PayloadError(f"{_named(what, name)} is not msgspec-serializable: {exc}") from exc
    # msgspec writes NaN and infinities as null: only a value whose JSON holds a null can
    # hold one, so the walk is skipped for most values.
    if b"null" in data and _has_non_finite(value):
        raise PayloadError(f"{_named(what, name)} holds NaN or an infinity, which JSON cannot hold")
    if decoded_next:
        return data
    try:
        _validator.decode(data)  # raw JSON (msgspec.Raw) passes through the encoder unchecked
    except RecursionError as exc:
        raise PayloadError(f"{_named(what, name)} is nested too deeply to read back") from exc
    except msgspec.DecodeError as exc:
        raise PayloadError(f"{_named(what, name)} holds raw JSON that is not valid: {exc}") from exc
    return data


def check_size(data: bytes, limit: int | None, what: str, name: str | None = None) -> None:
    """Raises `PayloadError` when `data` is over `limit` bytes (None: no limit)."""
    if limit is not None and len(data) > limit:
        raise PayloadError(
            f"{_named(what, name)} is {len(data):,} bytes of JSON, "
            f"over the limit of {limit:,} (Runtime(max_payload_bytes=...))"
        )


def _has_non_finite(value: object, depth: int = 0) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if depth > 200 or isinstance(value, str | bytes | int | bool | None):
        return False
    if isinstance(value, dict):
        return any(_has_non_finite(item, depth + 1) for item in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_has_non_finite(item, depth + 1) for item in value)
    if isinstance(value, msgspec.Struct):
        return any(
            _has_non_finite(getattr(value, field), depth + 1) for field in value.__struct_fields__
        )
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is not None:
        return any(_has_non_finite(getattr(value, field), depth + 1) for field in fields)
    return False


def decode_payload(data: bytes, type_: Any, what: str, name: str | None = None) -> Any:
    """Decode JSON bytes as `type_`. Raises `PayloadError` on a mismatch (`what`,
    `name`: as for `encode_payload`)."""
    try:
        return _decoder(type_).decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        message = f"{_named(what, name)} does not match its declared type: {exc}"
        raise PayloadError(message) from exc
    except RecursionError as exc:
        raise PayloadError(f"{_named(what, name)} is nested too deeply to read") from exc


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
