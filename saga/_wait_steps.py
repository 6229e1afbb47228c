"""`Sleep` and `WaitForSignal`: steps that wait, durably, without holding a task."""

from __future__ import annotations

from typing import Any

from ._context import StepContext
from ._definition import Step, check_timeout
from ._errors import DefinitionError, PayloadError
from ._payload import decode_payload, encode_payload
from ._waits import Continue, OnTimeout, SignalSpec, SleepSpec, UntilFunction


async def _waits(ctx: StepContext, saga_input: Any) -> None:
    """Placeholder action: the saga actor handles waiting steps itself."""


class Sleep(Step):
    """Wait `seconds`, or until the time `until(ctx, input)` returns (aware datetime or epoch).

    The wake-up time is persisted: after a restart the saga wakes at the
    original time, and a wake-up that fell due while the process was down
    fires at once. The step's result is the wake-up time (epoch seconds).
    Raises `DefinitionError` unless exactly one of `seconds`/`until` is given.
    """

    def __init__(
        self, name: str, *, seconds: float | None = None, until: UntilFunction | None = None
    ) -> None:
        super().__init__(name, _waits, result_type=float)
        if (seconds is None) == (until is None):
            raise DefinitionError(f"sleep {name!r}: give exactly one of seconds= or until=")
        if seconds is not None and (isinstance(seconds, bool) or not seconds >= 0):
            raise DefinitionError(f"sleep {name!r}: seconds must be >= 0, got {seconds!r}")
        if until is not None and not callable(until):
            raise DefinitionError(f"sleep {name!r}: until must be callable")
        self.wait = SleepSpec(seconds, until)


class WaitForSignal(Step):
    """Wait for the signal `signal` (default: the step's name), sent with `Runtime.signal`.

    The payload is validated as `payload_type` and becomes the step's
    result. Signals sent before the saga reaches this step are kept for it.
    After `timeout` seconds with no signal, `on_timeout` decides:
    `OnTimeout.COMPENSATE` (default), `OnTimeout.FAIL`, or `Continue(default)`.
    Raises `DefinitionError` for a bad timeout or a default that does not
    match `payload_type`.
    """

    def __init__(
        self,
        name: str,
        signal: str | None = None,
        *,
        payload_type: Any = Any,
        timeout: float | None = None,
        on_timeout: OnTimeout | Continue = OnTimeout.COMPENSATE,
    ) -> None:
        super().__init__(name, _waits, result_type=payload_type)
        signal = name if signal is None else signal
        if not isinstance(signal, str) or not signal:
            raise DefinitionError(f"wait {name!r}: signal must be a non-empty string")
        check_timeout(f"wait {name!r}: timeout", timeout)
        default: bytes | None = None
        if isinstance(on_timeout, Continue):
            try:
                default = encode_payload(on_timeout.default, f"wait {name!r}: default")
                decode_payload(default, payload_type, f"wait {name!r}: default")
            except PayloadError as exc:
                raise DefinitionError(str(exc)) from exc
        elif not isinstance(on_timeout, OnTimeout):
            raise DefinitionError(f"wait {name!r}: on_timeout must be an OnTimeout or Continue")
        self.wait = SignalSpec(signal, payload_type, timeout, on_timeout, default)
