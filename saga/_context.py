"""`StepContext`: what every action and compensation receives first."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec


class StepContext(msgspec.Struct, frozen=True, kw_only=True):
    """Facts about the attempt being run.

    `idempotency_key` is `f"{saga_id}:{step}"` for an action and
    `f"{saga_id}:{step}:compensate"` for a compensation: stable across
    retries and restarts, so the services a step calls can deduplicate.
    `results` maps the names of the steps that succeeded before this one to
    their recorded results.

    A frozen msgspec Struct (one is made per attempt: a frozen dataclass takes a
    few times longer to build).
    """

    saga_id: str
    step: str
    attempt: int
    idempotency_key: str
    results: Mapping[str, Any]
    compensating: bool = False
