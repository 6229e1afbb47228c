"""Parsing the project's own source in tests."""

from __future__ import annotations

import ast
import gc
from pathlib import Path


def parse_source(path: Path) -> ast.Module:
    """`ast.parse` of `path`, with the garbage collector held off meanwhile.

    CPython 3.11 keeps the AST converter's recursion depth in module-wide state. A
    collection during the parse can run a finalizer that formats a traceback (asyncio's
    "exception was never retrieved" for a task an earlier test left behind), and 3.11's
    traceback module calls `ast.parse` itself: the outer parse then fails with
    "SystemError: AST constructor recursion depth mismatch".
    """
    source = path.read_text(encoding="utf-8")
    collecting = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, filename=str(path))
    finally:
        if collecting:
            gc.enable()
