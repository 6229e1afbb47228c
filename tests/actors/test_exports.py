"""The public surface of `actors`: small, explicit, documented, and nothing private leaks."""

from __future__ import annotations

import ast
import inspect
import types
from pathlib import Path

import actors
from tests.source import parse_source

PACKAGE_DIR = Path(actors.__file__).parent


def exported_classes() -> list[type]:
    return [obj for name in actors.__all__ if inspect.isclass(obj := getattr(actors, name))]


def test_all_is_a_tuple_of_unique_public_names() -> None:
    assert isinstance(actors.__all__, tuple)
    assert all(isinstance(name, str) for name in actors.__all__)
    assert len(set(actors.__all__)) == len(actors.__all__)
    assert not [name for name in actors.__all__ if name.startswith("_")]


def test_every_exported_name_exists_and_star_import_gives_exactly_them() -> None:
    missing = [name for name in actors.__all__ if not hasattr(actors, name)]
    assert missing == []
    namespace: dict[str, object] = {}
    exec("from actors import *", namespace)
    del namespace["__builtins__"]
    assert set(namespace) == set(actors.__all__)


def test_nothing_public_is_left_out_of_all() -> None:
    public = {
        name
        for name, value in vars(actors).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(actors.__all__)
    # Submodules are private: only `_name` modules live in the package.
    modules = {path.stem for path in PACKAGE_DIR.glob("*.py")} - {"__init__"}
    assert modules, "no modules found"
    assert [name for name in modules if not name.startswith("_")] == []


def test_exported_classes_are_the_real_thing_under_their_own_name() -> None:
    for cls in exported_classes():
        assert getattr(actors, cls.__name__) is cls
        assert cls.__module__.startswith("actors."), cls
        assert not cls.__name__.startswith("_")


def test_exported_classes_are_documented() -> None:
    for cls in exported_classes():
        doc = cls.__dict__.get("__doc__")
        assert doc, f"{cls.__name__} has no docstring"
        # A dataclass without a docstring gets its signature as one.
        assert not doc.startswith(f"{cls.__name__}("), f"{cls.__name__} has no docstring"


def undocumented_public_members() -> list[str]:
    missing = []
    for cls in exported_classes():
        if issubclass(cls, BaseException):
            continue
        for attribute, value in vars(cls).items():
            if attribute.startswith("_"):
                continue
            target = value.fget if isinstance(value, property) else value
            if callable(target) and not inspect.getdoc(target):
                missing.append(f"{cls.__name__}.{attribute}")
    return missing


def test_public_methods_and_properties_are_documented() -> None:
    assert undocumented_public_members() == []


def test_errors_form_one_tree_and_each_says_who_raises_it() -> None:
    errors = [cls for cls in exported_classes() if issubclass(cls, BaseException)]
    assert actors.ActorError in errors
    assert len(errors) > 1
    for error in errors:
        assert issubclass(error, actors.ActorError), error
        if error is not actors.ActorError:
            assert "Raised" in (error.__doc__ or ""), f"{error.__name__}: who raises it?"
    assert issubclass(actors.AskTimeoutError, TimeoutError)


def test_strategy_union_names_exactly_the_exported_strategies() -> None:
    assert set(actors.SupervisorStrategy.__args__) == {
        actors.RestartWithBackoff,
        actors.Stop,
        actors.Escalate,
    }


def test_package_ships_py_typed() -> None:
    assert (PACKAGE_DIR / "py.typed").is_file()


def test_the_kernel_imports_nothing_from_the_layers_above() -> None:
    offenders = []
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        for node in ast.walk(parse_source(path)):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            offenders += [f"{path.name}: {root}" for root in roots if root in {"saga", "runtime"}]
    assert offenders == []
