"""Fault injection for your own sagas, in your own test suite.

from runtime.testing import fault_injection

def test_checkout_survives_faults() -> None:
    fault_injection(
        build_checkout,                 # a Saga, or build(services) -> Saga
        inputs=st.builds(Order, ...),   # a Hypothesis strategy of saga inputs
        services=FakeServices,          # fresh fake services per example
        invariants=[stock_is_restored], # invariant(services, report), raising AssertionError
    ).check(max_examples=50)

Each example runs a few sagas on a fresh SQLite file and a `VirtualClock`
while a drawn `FaultPlan` fails their steps (transient, permanent,
timeout, effect-then-error, duplicate delivery, outage), crashes the
runtime at every kind of point (a new runtime then opens on the same file),
and fails store writes. It then checks the compensation guarantees from its own
journal of every call and from the store, and your invariants over your
services. A violation raises `InvariantViolation` with each saga's
timeline; Hypothesis prints the plan, and `.run(inputs, plan)` replays it.
Needs `hypothesis`.
"""

from ._errors import (
    InjectedFault,
    InjectedPermanentError,
    InjectedTransientError,
    InvariantViolation,
)
from ._journal import Call, CallKind, Note
from ._kit import FaultInjection, Invariant, fault_injection
from ._plan import (
    FAULT_KINDS,
    Crash,
    CrashPoint,
    Fault,
    FaultKind,
    FaultPlan,
    StepFault,
    StepFaultKind,
    StoreFault,
    StoreFaultKind,
)
from ._replay import ReplayProblem, ReplayReport, replay_check
from ._report import FaultReport

__all__ = (
    "replay_check",
    "ReplayProblem",
    "ReplayReport",
    "fault_injection",
    "FaultInjection",
    "Invariant",
    "FaultReport",
    "InvariantViolation",
    "FaultPlan",
    "Fault",
    "StepFault",
    "Crash",
    "StoreFault",
    "FaultKind",
    "FAULT_KINDS",
    "StepFaultKind",
    "CrashPoint",
    "StoreFaultKind",
    "Call",
    "CallKind",
    "Note",
    "InjectedFault",
    "InjectedTransientError",
    "InjectedPermanentError",
)
