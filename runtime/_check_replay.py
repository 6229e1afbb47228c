"""`python -m runtime check-replay`: the replay check of `runtime.testing`, from the shell."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from saga import Saga

from .codecs import PayloadCodec

if TYPE_CHECKING:
    from .testing._replay import ReplayReport


def load_sagas(specs: Sequence[str]) -> list[Saga[Any, Any]]:
    """The definitions named `module:attribute` (a Saga, or an iterable of them)."""
    found: list[Saga[Any, Any]] = []
    for spec in specs:
        module_name, colon, attribute = spec.partition(":")
        if not colon or not module_name or not attribute:
            raise SystemExit(f"--sagas takes module:attribute, not {spec!r}")
        try:
            value: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                value = getattr(value, part)
        except (ImportError, AttributeError) as exc:
            raise SystemExit(f"cannot load {spec}: {exc}") from None
        items = [value] if isinstance(value, Saga) else value
        try:
            sagas = list(items)
        except TypeError:
            raise SystemExit(f"{spec} is neither a Saga nor a list of them") from None
        if not sagas or not all(isinstance(saga, Saga) for saga in sagas):
            raise SystemExit(f"{spec} is neither a Saga nor a list of them")
        found.extend(sagas)
    return found


def check_replay(
    database: str, specs: Sequence[str], *, schema: str, codec: PayloadCodec | None = None
) -> ReplayReport:
    """The replay check of the definitions named by `specs` against `database`."""
    from .testing._replay import replay_check

    sagas = load_sagas(specs)
    try:
        return anyio.run(lambda: replay_check(database, sagas=sagas, schema=schema, codec=codec))
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
