"""What a code saga's body asked for, as recorded: call specs and the body's reactions.

A code saga's body is user code the state machine never runs. What it did
reaches the machine as data inside events: after the calls it awaited
reached their final outcome, the body *reacted* by making new calls
(`Calls`), returning (`Returned`) or raising (`Raised`). Each new call is a
`CallSpec`: its kind, its name, its recorded arguments and the numbers of
its retry policies, so the machine can apply it without the definition,
and a history replays to the same snapshot with no body at all.
"""

from __future__ import annotations

import enum

import msgspec

from ._errorinfo import NULL, ErrorInfo

EMPTY_ARGS = msgspec.Raw(b"[]")
"""The recorded arguments of a call that has none."""


class CallKind(enum.StrEnum):
    """What a code saga's `ctx` call is."""

    STEP = "step"
    """`ctx.step`: an action with an intent, an outcome, retries and maybe a compensation."""
    CHILD = "child"
    """`ctx.child`: a saga of its own, started once, waited for without holding memory."""
    SLEEP = "sleep"
    """`ctx.sleep`: a durable wait until a time."""
    SIGNAL = "signal"
    """`ctx.wait_for_signal`: a durable wait for a signal, maybe with a timeout."""
    NOW = "now"
    """`ctx.now()`: the time, recorded on first call."""
    UUID = "uuid"
    """`ctx.uuid()`: a random UUID, recorded on first call."""
    RANDOM = "random"
    """`ctx.random()`: a float in [0, 1), recorded on first call."""
    PATCH = "patched"
    """`ctx.patched(id)`: whether this execution takes a patched path, recorded."""

    @property
    def blocks(self) -> bool:
        """Whether the body waits for this call's outcome (the value kinds never wait)."""
        return self in _BLOCKING


_BLOCKING = frozenset({CallKind.STEP, CallKind.CHILD, CallKind.SLEEP, CallKind.SIGNAL})
KEYED = frozenset({CallKind.STEP, CallKind.CHILD})
"""Kinds with an idempotency key (and so a numbering of repeated names)."""


class Backoff(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """The numbers of a `RetryPolicy`, as recorded with a call (the error types stay in code)."""

    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: float | None = 60.0
    """None: no cap (JSON has no infinity)."""
    maximum_attempts: int | None = 3
    jitter: float = 0.1

    def allows_another_attempt(self, attempts_made: int) -> bool:
        return self.maximum_attempts is None or attempts_made < self.maximum_attempts

    def delay(self, attempt: int, jitter_sample: float) -> float:
        """Seconds to wait after failed attempt `attempt`; `jitter_sample` is in [0, 1)."""
        exponent = min(attempt - 1, 1000)
        try:
            growth = self.backoff_coefficient**exponent
        except OverflowError:
            growth = float("inf")
        base = 0.0 if self.initial_interval == 0 else self.initial_interval * growth
        if self.maximum_interval is not None:
            base = min(base, self.maximum_interval)
        return max(0.0, base * (1.0 + self.jitter * (2.0 * jitter_sample - 1.0)))


class CallSpec(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One `ctx` call of a code saga's body, as recorded with its intent.

    `position` counts the saga's calls from 0 (messages count from 1).
    `occurrence` is k for the k-th keyed call of one name (its key then
    ends in `#k`). `group` is the position of the first call of its
    `ctx.parallel` group (None: not in one). `retry` and
    `compensation_retry` are None for the defaults. `until` is a sleep's
    wake-up time; `timeout` a signal wait's limit in seconds. `child` and
    `child_version` name a child's saga; `target` is the child's saga id.
    """

    kind: CallKind
    name: str
    position: int
    occurrence: int = 1
    args: msgspec.Raw = EMPTY_ARGS
    group: int | None = None
    compensable: bool = False
    retry: Backoff | None = None
    compensation_retry: Backoff | None = None
    until: float | None = None
    timeout: float | None = None
    child: str | None = None
    child_version: int | None = None
    target: str | None = None
    value: msgspec.Raw = NULL
    """A value kind's recorded value (now, uuid, random, patched)."""

    @property
    def label(self) -> str:
        """The call's name as keys and timelines show it: `name`, or `name#k` for k >= 2."""
        return self.name if self.occurrence == 1 else f"{self.name}#{self.occurrence}"


class Calls(msgspec.Struct, frozen=True, tag="calls", gc=False):
    """The body made these calls: value calls, then one blocking call or a parallel group."""

    calls: tuple[CallSpec, ...]


class Returned(msgspec.Struct, frozen=True, tag="returned", gc=False):
    """The body returned `output` (JSON): the saga completes."""

    output: msgspec.Raw = NULL


class Raised(msgspec.Struct, frozen=True, tag="raised", omit_defaults=True, gc=False):
    """The body raised `error`: the saga compensates its stack.

    `step` is the position of the call whose `StepFailedError` escaped the
    body unchanged, if that is what it raised.
    """

    error: ErrorInfo
    step: int | None = None


Reaction = Calls | Returned | Raised
"""What a code saga's body did once the calls it waited for had their outcome."""
