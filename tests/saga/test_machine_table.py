"""The machine's transition table in prose (its module docstring) against the table as data.

h11's rule: the table is data, and the words describing it cannot drift from it.
"""

from __future__ import annotations

import re

from saga import _machine
from saga.engine import Event, accepted_statuses

COLUMNS = {
    "new": "new",
    "run": "running",
    "wait": "waiting",
    "comp": "compensating",
    "done": "completed",
    "undone": "compensated",
    "failed": "failed",
    "susp": "suspended",
}


def _documented_matrix() -> dict[str, frozenset[str]]:
    doc = _machine.__doc__
    assert doc is not None
    section = doc.split("Accepted events by status", 1)[1].split("Transition table", 1)[0]
    lines = section.splitlines()
    header = next(line for line in lines if line.strip().startswith("event"))
    words = list(re.finditer(r"\S+", header))[1:]  # the first is the "event" column
    spans = [(m.start(), m.end(), COLUMNS[m.group()]) for m in words]
    matrix: dict[str, frozenset[str]] = {}
    for line in lines[lines.index(header) + 1 :]:
        match = re.match(r"  ([A-Z]\w+)", line)
        if not match:
            continue
        marks = {m.start() for m in re.finditer("x", line[match.end() :])}
        accepted = set()
        for offset in marks:
            column = match.end() + offset
            status = next(name for start, end, name in spans if start - 1 <= column <= end)
            accepted.add(status)
        matrix[match.group(1)] = frozenset(accepted)
    return matrix


def test_the_documented_matrix_is_the_table() -> None:
    assert _documented_matrix() == accepted_statuses()


def test_every_event_type_has_a_row() -> None:
    documented = set(_documented_matrix())
    assert documented == {event.__name__ for event in Event.__args__}


def test_every_row_of_the_effect_table_names_a_real_event() -> None:
    doc = _machine.__doc__
    assert doc is not None
    effects = doc.split("Transition table (status, event -> effect)", 1)[1]
    names = set(re.findall(r"\b([A-Z][a-z]+(?:[A-Z][a-z]+)+)\b", effects))
    events = {event.__name__ for event in Event.__args__}
    named_events = {name for name in names if name.endswith(("ed", "Fired", "Requested"))}
    assert named_events <= events | {"StepFailedError", "InvalidTransitionError"}, (
        named_events - events
    )
