"""The kit's own record of a run: every wrapped call, every note, every durable write, in order.

One counter orders all three, so a saga's timeline can interleave what the
services saw (calls), what the kit did (faults, crashes, resumes) and what
the store made durable (history entries).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Literal

from saga import Clock
from saga.engine import Event

CallKind = Literal["action", "compensation"]


@dataclass(frozen=True)
class Call:
    """One wrapped call of a step's action or compensation, as the kit saw it.

    `took_effect`: True when the real callable returned; False when the kit
    stopped the attempt before calling it; None when unknown (the real
    callable raised, or a crash interrupted it). `error` says how the attempt
    ended if it did not return: "raised Type: message", "hung until the
    timeout cut it", "interrupted by the crash". `fault` is the kind of
    fault injected into it,
    `given_result` (compensations only) whether it was given a recorded
    result rather than None. `at` is the virtual time it started.
    """

    order: int
    at: float
    saga_id: str
    step: str
    attempt: int
    kind: CallKind
    idempotency_key: str
    took_effect: bool | None = None
    error: str | None = None
    fault: str | None = None
    given_result: bool | None = None

    def describe(self) -> str:
        what = f"{self.kind} of {self.step} attempt {self.attempt}"
        if self.kind == "action":
            what = f"action {self.step} attempt {self.attempt}"
        effect = {True: "took effect", False: "did not run", None: "effect unknown"}
        text = f"call: {what}: {effect[self.took_effect]}"
        if self.given_result is not None:
            text += ", given the recorded result" if self.given_result else ", given None"
        if self.error is not None:
            text += f"; {self.error}"
        if self.fault is not None:
            text += f"  [fault: {self.fault}]"
        return text


@dataclass(frozen=True)
class Note:
    """Something the kit did or saw: a fault injected, a crash, a runtime opened, a resume.

    `saga_id` is None for what concerns the whole runtime (a crash, a reopen).
    `at` is the virtual time.
    """

    order: int
    at: float
    saga_id: str | None
    text: str


@dataclass(frozen=True)
class Write:
    """A history entry the store acknowledged as durable, and when (in journal order)."""

    order: int
    saga_id: str
    seq: int
    event: Event


class Journal:
    """Append-only; written from the event loop only (no locking needed)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._order = itertools.count(1)
        self.calls: list[Call] = []
        self.notes: list[Note] = []
        self.writes: list[Write] = []

    def begin(
        self,
        *,
        saga_id: str,
        step: str,
        attempt: int,
        kind: CallKind,
        key: str,
        fault: str | None,
        given_result: bool | None,
    ) -> int:
        """Record a call as it starts; returns its index for `finish`."""
        call = Call(
            order=next(self._order),
            at=self._clock.now(),
            saga_id=saga_id,
            step=step,
            attempt=attempt,
            kind=kind,
            idempotency_key=key,
            fault=fault,
            given_result=given_result,
        )
        self.calls.append(call)
        return len(self.calls) - 1

    def finish(
        self, index: int, *, took_effect: bool | None = None, error: str | None = None
    ) -> None:
        call = self.calls[index]
        self.calls[index] = replace(
            call,
            took_effect=took_effect if took_effect is not None else call.took_effect,
            error=error if error is not None else call.error,
        )

    def note(self, saga_id: str | None, text: str) -> None:
        self.notes.append(Note(next(self._order), self._clock.now(), saga_id, text))

    def wrote(self, saga_id: str, seq: int, event: Event) -> None:
        self.writes.append(Write(next(self._order), saga_id, seq, event))
