"""The DuckDB IO manager, with tables that follow their assets' columns across upgrades.

dagster-duckdb-pandas inserts positionally (``insert into t select * from obj``) into a table created by the
first write. When a release adds a column (``client`` beside ``source``, say), every existing warehouse would
then refuse the next materialization. This handler adds the missing columns and inserts by name, so an
upgraded pipeline keeps writing to the same tables and the rows written before simply have NULL there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from dagster import OutputContext
from dagster._core.storage.db_io_manager import DbTypeHandler, TableSlice
from dagster_duckdb import DuckDBIOManager
from dagster_duckdb_pandas import DuckDBPandasTypeHandler


class EvolvingPandasTypeHandler(DuckDBPandasTypeHandler):
    """DuckDBPandasTypeHandler, after making an existing table's columns those of the frame, in its order."""

    def handle_output(
        self, context: OutputContext, table_slice: TableSlice, obj: pd.DataFrame, connection: Any
    ) -> None:
        if not obj.empty:
            follow_columns(connection, f"{table_slice.schema}.{table_slice.table}", obj)
        super().handle_output(context, table_slice, obj, connection)


def follow_columns(connection: Any, table: str, obj: pd.DataFrame) -> None:
    """Rebuild ``table`` with exactly ``obj``'s columns (new ones NULL, dropped ones gone); a no-op when equal.

    Runs only on the first write after a release changed an asset's columns, inside the IO manager's
    transaction-less connection; the rebuilt table keeps every row that was there.
    """
    schema, name = table.split(".", 1)
    current = [
        column
        for (column,) in connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
            "ORDER BY ordinal_position",
            [schema, name],
        ).fetchall()
    ]
    wanted = connection.execute("DESCRIBE SELECT * FROM obj").fetchall()
    if not current or current == [column for column, *_ in wanted]:
        return
    select = ", ".join(
        f'"{column}"' if column in current else f'CAST(NULL AS {kind}) AS "{column}"'
        for column, kind, *_ in wanted
    )
    connection.execute(f"CREATE OR REPLACE TABLE {table}__evolving AS SELECT {select} FROM {table}")
    connection.execute(f"DROP TABLE {table}")
    connection.execute(f"ALTER TABLE {table}__evolving RENAME TO {name}")


class WarehouseIOManager(DuckDBIOManager):
    """Every asset's DataFrame as a DuckDB table in the one warehouse file."""

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler[Any]]:
        return [EvolvingPandasTypeHandler()]

    @staticmethod
    def default_load_type() -> type | None:
        return pd.DataFrame
