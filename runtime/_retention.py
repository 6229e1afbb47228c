"""Retention: which ended sagas may be deleted, and the tombstone each leaves behind.

Both stores prune the same way, in passes over the ended sagas of one status by age
(`created_at`, then id), a page at a time, each page in its own short transaction:

- a saga goes once it ended before the cutoff and nothing is waiting to reach it (no
  inbox item: a parent may still ask a completed child to roll back);
- a child goes only once its parent is gone (a parent that rolls back asks its completed
  children to compensate), so a pass leaves the children of a parent it pruned to the
  next one;
- each leaves a tombstone (its id, name and a digest of its input) so that a late
  duplicate spawn starts nothing (`SagaPrunedError`), for `tombstone_window`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from saga import SagaStatus

from ._codec import readable_input
from ._errors import DuplicateSagaError, SagaPrunedError
from .codecs import PayloadCodec

PRUNABLE = frozenset({"completed", "compensated", "failed"})
"""Statuses `prune` may delete: ended ones. A suspended saga may hold effects to undo."""

DEFAULT_STATUSES = ("completed", "compensated")
"""What background retention deletes: `failed` sagas wait for an operator."""

PAGE = 200
"""Sagas looked at per transaction: a page is pruned in a few milliseconds, so the
writer (and every spawn waiting on it) is never held up for long."""

UNKNOWN_DIGEST = ""
"""The digest of an input that could not be read at pruning (written under a codec
the pruner lacked): any later spawn of that id is taken for the duplicate."""


def check_statuses(statuses: Iterable[SagaStatus | str]) -> tuple[str, ...]:
    """`statuses` as stored values; `ValueError` for one that is not ended."""
    values = tuple(sorted({str(SagaStatus(s)) for s in statuses}))
    if not values:
        raise ValueError("statuses must name at least one ended status")
    kept = [s for s in values if s not in PRUNABLE]
    if kept:
        raise ValueError(
            f"cannot prune {', '.join(kept)} sagas: only ended ones (completed, compensated, "
            "failed); a suspended saga may hold effects to undo, resume or cancel it first"
        )
    return values


def input_digest(plain: bytes | None) -> str:
    """The digest a tombstone keeps of a saga's input (JSON as spawned)."""
    if plain is None:
        return UNKNOWN_DIGEST
    return hashlib.sha256(plain).hexdigest()


def refuse_pruned(saga_id: str, saga_name: str, input: bytes, tomb: tuple[str, str]) -> Exception:
    """The answer to a spawn of a pruned id: `SagaPrunedError` for the late duplicate
    (it ran; start nothing), `DuplicateSagaError` for another saga or input."""
    tomb_name, digest = tomb
    if tomb_name != saga_name:
        return DuplicateSagaError(saga_id, f"as a {tomb_name!r} saga (ended, pruned)")
    if digest not in (UNKNOWN_DIGEST, input_digest(input)):
        return DuplicateSagaError(saga_id, "with a different input (ended, pruned)")
    return SagaPrunedError(saga_id)


Cursor = tuple[float, str]
"""Where a pass stands: the (created_at, saga_id) of the last saga it looked at."""


@dataclass(slots=True, eq=False)
class Prune:
    """One page of a pruning pass, as a store write: look at up to `limit` sagas of
    `status` created before `ended_before`, after `after`, and delete those that ended
    before it. Sets `pruned` and `cursor` (None: the pass is over)."""

    status: str
    ended_before: float
    now: float
    after: Cursor | None = None
    limit: int = PAGE
    tombstones_before: float | None = None
    """Tombstones older than this go too."""
    pruned: int = 0
    cursor: Cursor | None = None
    error: Exception | None = None


@dataclass(slots=True)
class Candidate:
    """A saga a page looked at."""

    saga_id: str
    saga_name: str
    created_at: float
    input: object
    prunable: bool


@dataclass(slots=True)
class Page:
    """What a store makes of a page: the rows to delete, the tombstones they leave."""

    gone: list[str] = field(default_factory=list)
    tombstones: list[tuple[str, str, str, float]] = field(default_factory=list)


def plan_page(op: Prune, rows: list[Candidate], codec: PayloadCodec | None) -> Page:
    """Which of the page's rows go, and where the pass stands after it (`codec` opens
    the inputs for their tombstones' digests)."""
    page = Page()
    for row in rows:
        if row.prunable:
            page.gone.append(row.saga_id)
            digest = input_digest(readable_input(row.input, codec))
            page.tombstones.append((row.saga_id, row.saga_name, digest, op.now))
    op.pruned = len(page.gone)
    op.cursor = (rows[-1].created_at, rows[-1].saga_id) if len(rows) == op.limit else None
    return page
