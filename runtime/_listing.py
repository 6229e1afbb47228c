"""The query behind `Store.list_sagas`, for both SQL dialects."""

from __future__ import annotations

from collections.abc import Callable


def listing_query(
    *,
    saga_name: str | None,
    status: str | None,
    waiting_for: str | None,
    after: str | None,
    limit: int,
    version: int | None = None,
    placeholder: Callable[[int], str],
) -> tuple[str, list[object]]:
    """SQL and parameters listing sagas by id; `placeholder(n)` spells the n-th parameter."""
    clauses: list[str] = []
    params: list[object] = []
    for column, value in (
        ("status", status),
        ("saga_name", saga_name),
        ("waiting_for", waiting_for),
        ("version", version),
        ("saga_id >", after),
    ):
        if value is not None:
            params.append(value)
            operator = "" if column.endswith(">") else " ="
            clauses.append(f"{column}{operator} {placeholder(len(params))}")
    where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
    params.append(limit)
    sql = (
        "SELECT saga_id, saga_name, status, waiting_for, wake_at, updated_at, version FROM sagas "
        f"{where}ORDER BY saga_id LIMIT {placeholder(len(params))}"
    )
    return sql, params
