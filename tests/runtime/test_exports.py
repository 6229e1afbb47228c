"""The public API, trio-style: what `saga` and `runtime` export, that it exists, is
documented, keeps DESIGN.md's contract names, and that imports only point down."""

from __future__ import annotations

import ast
import enum
import inspect
import types
from pathlib import Path
from typing import Any

import pytest

import actors
import runtime
import saga
import saga.engine
import saga.store
from tests.source import parse_source

PACKAGES = (saga, saga.store, saga.engine, runtime)
MODULES = {module.__name__: module for module in PACKAGES}


def _documented(package: str, name: str) -> Any:
    return pytest.param(package, name, id=f"{package}.{name}")


def _public_objects() -> list[Any]:
    params = []
    for module in PACKAGES:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                params.append(_documented(module.__name__, name))
    return params


def _own_doc(obj: object) -> str | None:
    """The object's own docstring; the signature dataclasses and NamedTuples write is none."""
    # A class's __doc__ is its own; a function's or a property's too.
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return None
    name = getattr(obj, "__name__", "")
    if name and doc.startswith(f"{name}("):
        return None
    return doc


# -- the contract --------------------------------------------------------------------


def test_design_contract_names_import() -> None:
    from runtime import (
        DuplicateSagaError,
        Runtime,
        SagaCompensated,
        SagaFailed,
        SagaNotFound,
    )
    from saga import NonRetryableError, RetryPolicy, Saga, Step, StepContext

    for cls in (Saga, Step, RetryPolicy, StepContext, Runtime):
        assert inspect.isclass(cls)
    for error in (NonRetryableError, SagaCompensated, SagaFailed, SagaNotFound, DuplicateSagaError):
        assert issubclass(error, Exception)
    assert {"saga_id", "step", "attempt", "idempotency_key", "results"} <= set(
        inspect.signature(StepContext).parameters
    )
    assert {
        "maximum_attempts",
        "initial_interval",
        "backoff_coefficient",
        "maximum_interval",
        "non_retryable_error_types",
    } <= set(inspect.signature(RetryPolicy).parameters)
    assert {"compensate", "retry", "timeout"} <= set(inspect.signature(Step).parameters)
    assert list(inspect.signature(Runtime).parameters)[:2] == ["database", "sagas"]
    spawn = inspect.signature(Runtime.spawn).parameters
    assert list(spawn)[1:3] == ["saga", "input"]
    assert spawn["saga_id"].kind is inspect.Parameter.KEYWORD_ONLY
    assert spawn["saga_id"].default is None


def test_saga_status_is_a_str_enum_equal_to_its_strings() -> None:
    from runtime import SagaStatus

    assert issubclass(SagaStatus, enum.StrEnum)
    assert [status.value for status in SagaStatus] == [
        "running",
        "waiting",
        "compensating",
        "completed",
        "compensated",
        "failed",
        "suspended",
    ]
    for status in SagaStatus:
        text: str = status
        assert text == status.value
        assert str(status) == status.value
        assert f"{status}" == status.value
        assert SagaStatus(status.value) is status
    assert {s for s in SagaStatus if s.is_terminal} == {
        SagaStatus.COMPLETED,
        SagaStatus.COMPENSATED,
        SagaStatus.FAILED,
    }


def test_code_saga_contract_names_import() -> None:
    from saga import NonDeterminismError, Parallel, Saga, SagaContext, StepFailedError

    assert issubclass(StepFailedError, saga.SagaError)
    assert issubclass(NonDeterminismError, saga.SagaError)
    assert {"step", "error", "ambiguous"} <= set(
        vars(StepFailedError("s", saga.ErrorInfo(type="t", message="m"), ambiguous=True))
    )
    for method in (
        "step",
        "parallel",
        "child",
        "sleep",
        "wait_for_signal",
        "now",
        "uuid",
        "random",
    ):
        assert callable(getattr(SagaContext, method)), method
    assert inspect.isclass(Parallel)
    assert inspect.isclass(Saga)


# The front door holds what a saga author uses; the engine and the store SPI have their own
# public modules (pykka's `pykka.messages` is the model). This pins the split.
AUTHORING = {
    "Saga",
    "Step",
    "Parallel",
    "Sleep",
    "WaitForSignal",
    "Continue",
    "OnTimeout",
    "RetryPolicy",
    "Action",
    "Compensation",
    "StepContext",
    "SagaContext",
    "Clock",
    "SystemClock",
    "VirtualClock",
    "SagaStatus",
    "StepStatus",
    "CompensationStatus",
    "CallKind",
    "ErrorInfo",
    "FailureKind",
    "SagaError",
    "NonRetryableError",
    "StepFailedError",
    "NonDeterminismError",
    "DefinitionError",
    "PayloadError",
    "SagaNotFound",
    "SagaEndedError",
    "CorruptSagaError",
    "StoreError",
}
STORE_SPI = {
    "Store",
    "SharedStore",
    "RetainingStore",
    "Prunable",
    "StoredSaga",
    "SagaState",
    "StepState",
    "Signal",
    "ParentRef",
    "HistoryEntry",
    "InboxItem",
    "SagaRow",
    "DueSaga",
    "Notice",
    "OwnedSaga",
    "UnfinishedSaga",
    "StaleStateError",
    "LeaseLostError",
}


def test_the_front_door_holds_the_authoring_names_and_nothing_else() -> None:
    assert set(saga.__all__) == AUTHORING
    assert set(saga.store.__all__) == STORE_SPI
    assert not set(saga.engine.__all__) & (AUTHORING | STORE_SPI)
    assert {"transition", "Transition", "SagaActor", "FreshStart", "commit", "begin"} <= set(
        saga.engine.__all__
    )
    for dead in ("GetState", "SagaMessage", "start"):
        assert not hasattr(saga, dead), dead


RUNTIME_NAMES = {
    *("Runtime", "SagaHandle", "SagaInfo", "SagaPage", "SagaStatus", "SagaSummary", "StepInfo"),
    *("VirtualClock", "DelegatingStore", "PostgresStore", "SqliteStore"),
    *("CommitOutcomeUnknownError", "CorruptSagaError", "DuplicateSagaError", "LeaseLostError"),
    *("PayloadError", "RuntimeNotRunningError", "SagaCompensated", "SagaEndedError"),
    *("SagaError", "SagaFailed", "SagaNotFound", "SagaNotSuspendedError", "SagaSuspendedError"),
    *("SchemaVersionError", "StaleStateError", "StoreClosedError", "StoreError"),
    *("StoreLockedError", "UnknownSignalError", "UnregisteredSagaError", "SagaPrunedError"),
    "CodecError",
}


def test_runtime_exports_the_embedding_names_and_nothing_else() -> None:
    assert set(runtime.__all__) == RUNTIME_NAMES
    # authoring names have one home, `saga`; the runtime does not hand them out again
    assert not {"Sleep", "WaitForSignal", "OnTimeout", "Continue", "Step"} & set(runtime.__all__)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("UnknownSagaError", runtime.UnregisteredSagaError),
        ("Sleep", saga.Sleep),
        ("WaitForSignal", saga.WaitForSignal),
        ("OnTimeout", saga.OnTimeout),
        ("Continue", saga.Continue),
    ],
)
def test_renamed_runtime_names_still_import_with_a_deprecation_warning(
    old: str, new: object
) -> None:
    with pytest.warns(DeprecationWarning, match=f"runtime.{old} is deprecated"):
        assert getattr(runtime, old) is new


def test_resuming_and_being_suspended_are_two_errors() -> None:
    assert not issubclass(runtime.SagaSuspendedError, runtime.SagaNotSuspendedError)
    error = runtime.SagaSuspendedError("s", "kept crashing")
    assert (error.saga_id, error.reason) == ("s", "kept crashing")


# -- __all__ ------------------------------------------------------------------------------


@pytest.mark.parametrize("module", PACKAGES, ids=lambda m: m.__name__)
def test_all_is_a_tuple_of_unique_public_names_that_exist(module: types.ModuleType) -> None:
    names = module.__all__
    assert isinstance(names, tuple)
    assert all(isinstance(name, str) for name in names)
    assert len(set(names)) == len(names)
    assert not [name for name in names if name.startswith("_")]
    assert not [name for name in names if not hasattr(module, name)]


@pytest.mark.parametrize("module", PACKAGES, ids=lambda m: m.__name__)
def test_star_import_gives_exactly_all(module: types.ModuleType) -> None:
    namespace: dict[str, Any] = {}
    exec(f"from {module.__name__} import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(module.__all__)


@pytest.mark.parametrize("module", PACKAGES, ids=lambda m: m.__name__)
def test_exports_are_defined_in_the_layer_or_below(module: types.ModuleType) -> None:
    allowed = ("runtime.", "saga.") if module is runtime else ("saga.",)
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith(allowed), (name, obj.__module__)


def test_runtime_reexports_the_saga_layers_own_objects() -> None:
    shared = set(saga.__all__) & set(runtime.__all__)
    assert {"SagaNotFound", "PayloadError", "SagaStatus", "StoreError"} <= shared
    for name in shared:
        assert getattr(runtime, name) is getattr(saga, name), name


@pytest.mark.parametrize(("package", "name"), _public_objects())
def test_public_classes_and_functions_are_documented(package: str, name: str) -> None:
    module = MODULES[package]
    assert _own_doc(getattr(module, name)) is not None


@pytest.mark.parametrize(
    ("package", "name"),
    [
        _documented("runtime", f"{cls.__name__}.{member}")
        for cls in (runtime.Runtime, runtime.SagaHandle)
        for member, value in vars(cls).items()
        if not member.startswith("_") and (callable(value) or isinstance(value, property))
    ],
)
def test_runtime_and_handle_methods_are_documented(package: str, name: str) -> None:
    cls_name, member = name.split(".")
    value = vars(getattr(runtime, cls_name))[member]
    assert _own_doc(value) is not None


# -- errors --------------------------------------------------------------------------------


def _exported_errors() -> list[tuple[str, type[BaseException]]]:
    return [
        (f"{module.__name__}.{name}", obj)
        for module in PACKAGES
        for name in module.__all__
        if inspect.isclass(obj := getattr(module, name)) and issubclass(obj, BaseException)
    ]


def test_every_raised_error_is_a_saga_error() -> None:
    errors = _exported_errors()
    assert len(errors) > 10
    for label, error in errors:
        if error is saga.NonRetryableError:  # users raise it; Sagaloop does not
            assert not issubclass(error, saga.SagaError)
            continue
        assert issubclass(error, saga.SagaError), label
    assert issubclass(runtime.StoreClosedError, saga.StoreError)
    assert issubclass(saga.store.StaleStateError, saga.StoreError)
    assert issubclass(saga.CorruptSagaError, saga.StoreError)


def test_lookup_errors_are_lookup_errors() -> None:
    assert issubclass(runtime.SagaNotFound, LookupError)
    assert issubclass(runtime.UnregisteredSagaError, LookupError)


# -- packaging and layering -------------------------------------------------------------------


@pytest.mark.parametrize("package", [actors, saga, runtime], ids=lambda m: m.__name__)
def test_package_ships_py_typed(package: types.ModuleType) -> None:
    assert package.__file__ is not None
    assert (Path(package.__file__).parent / "py.typed").is_file()


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(parse_source(path)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [(actors, {"saga", "runtime"}), (saga, {"runtime"})],
    ids=["actors", "saga"],
)
def test_imports_only_point_down(package: types.ModuleType, forbidden: set[str]) -> None:
    assert package.__file__ is not None
    sources = sorted(Path(package.__file__).parent.glob("*.py"))
    assert sources
    for source in sources:
        assert not _imported_roots(source) & forbidden, source.name


def test_the_state_machine_is_pure() -> None:
    assert saga.__file__ is not None
    impure = {"anyio", "asyncio", "aiosqlite", "sqlite3", "logging", "time", "random", "os"}
    for pure in (
        "_machine.py",
        "_transitions.py",
        "_compensation.py",
        "_interruptions.py",
        "_program.py",
        "_calls.py",
        "_model.py",
        "_events.py",
    ):
        assert not _imported_roots(Path(saga.__file__).parent / pure) & impure, pure
