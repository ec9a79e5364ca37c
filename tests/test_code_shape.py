"""Rooms of a readable size: no module over 500 lines and no function over 80 in the two packages.

A limit that is not checked drifts; this keeps the house readable at one sitting as issues land.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support import REPO_ROOT

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
SOURCES = sorted(p for pkg in ("exampass_pipeline", "exampass_api") for p in (REPO_ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_module_and_functions_are_readable_at_one_sitting(path: Path) -> None:
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines (limit {MAX_MODULE_LINES}): split it"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines in {path.name}: {', '.join(long)}"


def test_the_packages_have_sources() -> None:
    assert len(SOURCES) > 20
