"""Static checks over the product sources: function length, imports as a graph."""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = ("kmr", "export", "client")
MAX_FUNCTION_LINES = 60
LONG_FUNCTION_MARK = "# long-function:"


@dataclass(frozen=True)
class LongFunction:
    """A function over the limit: where, how long, and its stated reason (or None)."""

    path: str
    line: int
    name: str
    code_lines: int
    reason: str | None


def product_sources() -> list[Path]:
    """Every .py file of the product packages."""
    return [p for package in PRODUCT_PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]


def _code_lines(source: str) -> set[int]:
    """Line numbers holding code (not blank, not only a comment)."""
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                          tokenize.DEDENT, tokenize.ENDMARKER):
            continue
        lines.update(range(token.start[0], token.end[0] + 1))
    return lines


def long_functions(path: Path, root: Path = ROOT) -> list[LongFunction]:
    """Functions of ``path`` over MAX_FUNCTION_LINES lines of code (def line in, docstring out)."""
    source = path.read_text(encoding="utf-8")
    text_lines = source.splitlines()
    code = _code_lines(source)
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        body = set(range(node.lineno, (node.end_lineno or node.lineno) + 1)) & code
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                and isinstance(first.value.value, str):
            body -= set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
        if len(body) <= MAX_FUNCTION_LINES:
            continue
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        nearby = text_lines[max(start - 2, 0):node.lineno]
        reason = next((line.split(LONG_FUNCTION_MARK, 1)[1].strip() for line in nearby
                       if LONG_FUNCTION_MARK in line), None)
        found.append(LongFunction(str(path.relative_to(root)), node.lineno, node.name,
                                  len(body), reason or None))
    return found
