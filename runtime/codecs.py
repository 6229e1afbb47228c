"""Payload codecs: how user values lie at rest (compressed, encrypted).

    from runtime.codecs import AesGcm, Compression, chain
    codec = chain(Compression(), AesGcm(keys={"k2": key2, "k1": key1}, active="k2"))
    async with Runtime("orders.db", sagas=[checkout], codec=codec) as rt: ...

A codec turns the JSON of a stored document (a saga's input, its snapshot, each
history event, each inbox payload) into other bytes and back. Ids, names,
statuses, versions and times are columns of their own and stay in clear, so
listing, indexes, leases and retention work without the key. Each codec tags
what it writes, so a database written partly before the codec was turned on
(or under an older key) keeps working.

`AesGcm` needs the `cryptography` package: `pip install 'sagaloop[crypto]'`.
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from saga import PayloadError

__all__ = ("PayloadCodec", "Compression", "AesGcm", "chain", "load_key_file", "UnknownKeyError")


class UnknownKeyError(PayloadError):
    """A value was written under a key this codec does not have (a status can then show
    what is kept in clear; an altered value is a plain `PayloadError`)."""


@runtime_checkable
class PayloadCodec(Protocol):
    """Turns the bytes of a stored value into other bytes and back.

    `decode(encode(data)) == data`. `decode` raises `PayloadError` for bytes it
    cannot read (another codec's, an unknown key, altered ones): the runtime then
    suspends the saga with that reason instead of running it on garbage.
    """

    def encode(self, data: bytes) -> bytes: ...

    def decode(self, data: bytes) -> bytes: ...


_RAW = b"="
_ZLIB = b"z"
_AES = b"a"


_WINDOW_BITS = -12
"""Raw deflate with a 4 KiB window: stored values are small, and zlib's default state
(a 32 KiB window, 256 KiB of buffers) costs ten times longer to set up than to use."""
_MEMORY_LEVEL = 4


class Compression:
    """Deflate at `level`; values shorter than `min_size` bytes are kept as they are (their
    compressed form would be as long, and it costs time)."""

    def __init__(self, level: int = 6, min_size: int = 256) -> None:
        if not -1 <= level <= 9:
            raise ValueError(f"level must be between -1 and 9, got {level!r}")
        self.level = level
        self.min_size = min_size

    def encode(self, data: bytes) -> bytes:
        if len(data) >= self.min_size:
            deflate = zlib.compressobj(self.level, zlib.DEFLATED, _WINDOW_BITS, _MEMORY_LEVEL)
            packed = deflate.compress(data) + deflate.flush()
            if len(packed) < len(data):
                return _ZLIB + packed
        return _RAW + data

    def decode(self, data: bytes) -> bytes:
        tag, body = data[:1], data[1:]
        if tag == _RAW:
            return body
        if tag == _ZLIB:
            try:
                inflate = zlib.decompressobj(_WINDOW_BITS)
                data = inflate.decompress(body)
                if not inflate.eof:
                    raise zlib.error("truncated")
                return data
            except zlib.error as exc:
                raise PayloadError(f"cannot decompress a stored value: {exc}") from None
        raise PayloadError(f"not a value Compression wrote (it starts {data[:8]!r})")

    def __repr__(self) -> str:
        return f"Compression(level={self.level}, min_size={self.min_size})"


class AesGcm:
    """AES-GCM encryption with key ids and rotation.

    `keys` maps key ids to 16-, 24- or 32-byte keys; `active` is the id new values are
    encrypted under. Every value records its key id, so old keys keep decrypting what
    they wrote: rotate by adding a key and making it active, and drop the old one once
    nothing written under it is left. A value under a key not given here, or one that was
    altered, is a `PayloadError` naming the key. Each value has a fresh 96-bit nonce; the
    saga id and column are not bound in (values could be swapped between rows by someone
    who can write the database, not read or forged).
    """

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:
            raise ImportError(
                "AesGcm needs the cryptography package: pip install 'sagaloop[crypto]'"
            ) from exc
        if active not in keys:
            raise ValueError(f"the active key {active!r} is not among the keys {sorted(keys)}")
        self._ciphers = {}
        for key_id, key in keys.items():
            encoded = key_id.encode()
            if not 1 <= len(encoded) <= 255:
                raise ValueError(f"a key id must be 1 to 255 bytes of UTF-8, got {key_id!r}")
            if not isinstance(key, bytes) or len(key) not in (16, 24, 32):
                raise ValueError(f"key {key_id!r} must be 16, 24 or 32 bytes")
            self._ciphers[key_id] = AESGCM(key)
        self.active = active
        self._header = _AES + bytes([len(active.encode())]) + active.encode()

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._ciphers))

    def encode(self, data: bytes) -> bytes:
        nonce = os.urandom(12)
        return self._header + nonce + self._ciphers[self.active].encrypt(nonce, data, None)

    def decode(self, data: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        if data[:1] != _AES or len(data) < 2:
            raise PayloadError(f"not a value AesGcm wrote (it starts {data[:8]!r})")
        size = data[1]
        key_id = data[2 : 2 + size].decode("utf-8", "backslashreplace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UnknownKeyError(
                f"a value is encrypted under key {key_id!r}, which is not among this "
                f"codec's keys ({', '.join(self.key_ids)})"
            )
        nonce = data[2 + size : 14 + size]
        try:
            return cipher.decrypt(nonce, data[14 + size :], None)
        except InvalidTag:
            raise PayloadError(
                f"a value under key {key_id!r} does not decrypt: it was altered, or the "
                "key is not the one it was written with"
            ) from None

    def __repr__(self) -> str:
        return f"AesGcm(keys={list(self.key_ids)}, active={self.active!r})"  # never the keys


class _Chain:
    def __init__(self, codecs: tuple[PayloadCodec, ...]) -> None:
        self.codecs = codecs

    def encode(self, data: bytes) -> bytes:
        for codec in self.codecs:
            data = codec.encode(data)
        return data

    def decode(self, data: bytes) -> bytes:
        for codec in reversed(self.codecs):
            data = codec.decode(data)
        return data

    def __repr__(self) -> str:
        return f"chain({', '.join(map(repr, self.codecs))})"


def chain(*codecs: PayloadCodec) -> PayloadCodec:
    """Codecs applied in order when writing, in reverse when reading
    (`chain(Compression(), AesGcm(...))`: compress, then encrypt)."""
    if not codecs:
        raise ValueError("chain needs at least one codec")
    return codecs[0] if len(codecs) == 1 else _Chain(codecs)


def load_key_file(path: str | os.PathLike[str]) -> PayloadCodec:
    """The codec a key file describes (the CLI's `--key-file`), as JSON:

        {"active": "k2", "keys": {"k2": "<base64 key>", "k1": "<base64 key>"},
         "compress": true}

    Raises `ValueError` naming what is wrong with the file.
    """
    where = Path(path)
    try:
        spec = json.loads(where.read_text())
        keys = {str(k): base64.b64decode(v, validate=True) for k, v in spec["keys"].items()}
        active = str(spec["active"])
        compress = bool(spec.get("compress", False))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{where} is not a key file ({{'active': id, 'keys': {{id: base64}}}}): {exc}"
        ) from None
    encryption = AesGcm(keys, active)
    return chain(Compression(), encryption) if compress else encryption
