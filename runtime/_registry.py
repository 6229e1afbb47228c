"""The definitions a runtime was given: several versions of one saga name side by side.

`spawn("checkout", ...)` starts the newest version; an instance runs to its
end on the version it started with (`definition_version` in its snapshot).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from saga import DefinitionError, Saga, SagaContext, Step, StepContext
from saga.store import SagaState

from ._errors import UnregisteredSagaError


class Registry:
    """Saga definitions by name and version. Raises `DefinitionError` for two different
    definitions of one (name, version), `TypeError` for something that is not a `Saga`."""

    def __init__(self, sagas: Iterable[Saga[Any, Any]]) -> None:
        self._by_key: dict[tuple[str, int], Saga[Any, Any]] = {}
        self._newest: dict[str, Saga[Any, Any]] = {}
        for saga in sagas:
            if not isinstance(saga, Saga):
                raise TypeError(f"sagas must be Saga definitions, got {saga!r}")
            key = (saga.name, saga.version)
            known = self._by_key.get(key)
            if known is not None and known is not saga:
                raise DefinitionError(
                    f"two different definitions of saga {saga.name!r} version {saga.version}"
                )
            self._by_key[key] = saga
            newest = self._newest.get(saga.name)
            if newest is None or saga.version > newest.version:
                self._newest[saga.name] = saga

    def __iter__(self) -> Iterator[Saga[Any, Any]]:
        return iter(self._by_key.values())

    def __contains__(self, name: object) -> bool:
        return name in self._newest

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._newest)

    def newest(self, name: str) -> Saga[Any, Any] | None:
        return self._newest.get(name)

    def get(self, name: str, version: int) -> Saga[Any, Any] | None:
        return self._by_key.get((name, version))

    def versions(self, name: str) -> list[int]:
        return sorted(version for known, version in self._by_key if known == name)

    def resolve(self, saga: Saga[Any, Any] | str) -> Saga[Any, Any]:
        """What `spawn` starts: that exact definition, or the newest version of a name.
        Raises `UnregisteredSagaError`."""
        if isinstance(saga, Saga):
            found = self._by_key.get((saga.name, saga.version))
            if found is saga:
                return found
            what = f"saga {saga.name!r} version {saga.version}"
        else:
            found = self._newest.get(saga)
            if found is not None:
                return found
            what = f"saga {saga!r}"
        raise UnregisteredSagaError(
            f"{what} is not one of this runtime's sagas ({self.describe()}); "
            "pass it in Runtime(sagas=[...])"
        )

    def of_instance(self, name: str, version: int) -> Saga[Any, Any]:
        """The definition a stored instance runs on. Raises `UnregisteredSagaError`."""
        found = self._by_key.get((name, version))
        if found is None:
            raise UnregisteredSagaError(not_registered(name, version))
        return found

    def describe(self) -> str:
        return ", ".join(f"{name} v{v}" for name, v in sorted(self._by_key)) or "none"


def not_registered(name: str, version: int) -> str:
    """The reason a saga of an unregistered version is suspended with."""
    return f"{name} v{version} is not registered"


async def _never_runs(ctx: StepContext, *args: Any) -> Any:
    raise RuntimeError("a stand-in for an unregistered saga version runs nothing")


async def _never_runs_body(ctx: SagaContext, saga_input: Any) -> Any:
    raise RuntimeError("a stand-in for an unregistered saga version runs nothing")


def stand_in(state: SagaState) -> Saga[Any, Any]:
    """A definition of the shape of `state`, for a version this runtime was not given: it
    reads the saga (status, timeline) and suspends it; it never runs a step."""
    name, version = state.saga_name, state.definition_version
    if state.partial or state.is_code or not state.steps:
        return Saga(name, _never_runs_body, version=version)
    steps = [Step(f"step-{index + 1}", _never_runs) for index in range(len(state.steps))]
    return Saga(name, steps, version=version)
