"""`SagaHandle`: what `Runtime.spawn` returns; wait for the saga's outcome through it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from ._info import SagaInfo
    from ._runtime import Runtime

R = TypeVar("R")


class SagaHandle(Generic[R]):
    """A reference to one saga instance. Built by `Runtime.spawn`/`Runtime.handle`."""

    __slots__ = ("_runtime", "saga_id")

    def __init__(self, runtime: Runtime, saga_id: str) -> None:
        self._runtime = runtime
        self.saga_id = saga_id

    async def result(self, *, timeout: float | None = None) -> R:
        """Wait for the saga to end and return its output.

        The output of a step-list saga maps each step's name to its result.
        Raises `SagaCompensated` if it was rolled back, `SagaFailed` if a
        compensation failed definitively, `SagaSuspendedError` if it is (or
        becomes) suspended for an operator, `TimeoutError` after `timeout` seconds.
        """
        output: Any = await self._runtime.result(self.saga_id, timeout=timeout)
        return output  # type: ignore[no-any-return]

    async def status(self) -> SagaInfo:
        """The saga's current state; see `Runtime.status`."""
        return await self._runtime.status(self.saga_id)

    def __repr__(self) -> str:
        return f"<SagaHandle {self.saga_id!r}>"
