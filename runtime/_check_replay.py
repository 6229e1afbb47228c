"""`python -m runtime check-replay`: the replay check of `runtime.testing`, from the shell."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from saga import Saga


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


def check_replay(database: str, specs: Sequence[str], *, schema: str) -> int:
    """Print one line per saga that would not replay; 1 if there is any, else 0."""
    from .testing._replay import replay_check

    sagas = load_sagas(specs)
    try:
        report = anyio.run(lambda: replay_check(database, sagas=sagas, schema=schema))
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    from .__main__ import printable

    for problem in report:
        print(printable(str(problem)))
    skipped = "".join(
        f"; {count} {printable(name)} saga{'s' * (count != 1)} skipped (no definition given)"
        for name, count in sorted(report.skipped.items())
    )
    print(
        f"{report.checked} unfinished saga{'s' * (report.checked != 1)} checked, "
        f"{len(report)} would not replay{skipped}",
        file=sys.stderr,
    )
    return 1 if report else 0
