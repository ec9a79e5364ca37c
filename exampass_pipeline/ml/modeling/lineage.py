"""A content hash of a training table, logged with each MLflow run, so a model version can be traced to
the exact rows it was trained on however those rows were loaded.
"""

from __future__ import annotations

import hashlib

import pandas as pd


def _canonical_column(col: pd.Series) -> pd.Series:
    # The same table read from CSV, DuckDB or pandas arrives as int64, Int32, float64, bool or object; the
    # hash must only change when a value does, so every column is rendered to one text form first.
    if pd.api.types.is_bool_dtype(col):
        return col.map(lambda v: "" if pd.isna(v) else ("true" if v else "false"))
    if pd.api.types.is_numeric_dtype(col):
        return col.astype("float64").map(lambda v: "" if pd.isna(v) else repr(float(v)))
    return col.map(lambda v: "" if pd.isna(v) else str(v))


def table_hash(df: pd.DataFrame) -> str:
    """sha256 of a table's content, independent of row order, column order, index and numeric dtype.

    Rows are rendered canonically, sorted by their full rendered content (the only stable key a table
    without ids has), joined with the sorted header, and hashed; two runs trained on the same rows get the
    same hash in MLflow however the rows were loaded.
    """
    columns = sorted(map(str, df.columns))
    if len(set(columns)) != len(columns):
        raise ValueError("table_hash: duplicate column names")
    frame = df.copy()
    frame.columns = list(map(str, df.columns))
    rendered = [_canonical_column(frame[c]) for c in columns]
    rows = sorted("\x1f".join(values) for values in zip(*rendered, strict=True)) if columns else []
    digest = hashlib.sha256()
    digest.update(("\x1f".join(columns) + "\n").encode())
    for row in rows:
        digest.update((row + "\n").encode())
    return digest.hexdigest()
