"""The published spec as an executable contract.

Every ```python block of the spec runs unmodified against this package, and what it
prints must match the shapes its comments (or its own arguments) promise.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parents[3] / "shared" / "seed" / "000_8bd999f5ab1a1f1d.txt"


def spec_blocks() -> list[str]:
    if not SPEC.is_file():
        pytest.fail(f"spec not found at {SPEC}: the tests read it from ../shared/seed/")
    return re.findall(r"```python\n(.*?)```", SPEC.read_text(encoding="utf-8"), re.S)


def run_block(source: str) -> tuple[str, dict]:
    namespace: dict = {"__name__": "__spec__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, str(SPEC), "exec"), namespace)  # noqa: S102 - the spec's own code
    return out.getvalue(), namespace


def promised_shapes(source: str) -> list[str]:
    """Shapes written as trailing comments of print lines, e.g. ``print(...)  # (32, 32)``."""
    return re.findall(r"print\(.*\)\s*#\s*(\(.*?\))", source)


def printed_shapes(output: str) -> list[str]:
    return re.findall(r"shape: (\(.*?\))", output)


def test_spec_has_the_five_documented_python_blocks():
    assert len(spec_blocks()) == 5


def test_spec_quick_start_prints_the_shapes_its_comments_promise():
    source = spec_blocks()[0]
    output, _ = run_block(source)
    assert promised_shapes(source) == ["(32, 32)", "(32, 100, 32)"]
    assert printed_shapes(output) == promised_shapes(source)


def test_spec_complete_model_builds_with_the_promised_output_shapes():
    _, namespace = run_block(spec_blocks()[1])
    model = namespace["model"]
    assert [tuple(t.shape) for t in model.outputs] == [(None, 10), (None, 10)]
    assert tuple(namespace["similarities"].shape) == (None, 100)
    assert tuple(namespace["user_emb"].shape) == (None, 32)


def test_spec_example1_prints_top5_shapes_for_16_users():
    output, _ = run_block(spec_blocks()[2])
    assert printed_shapes(output) == ["(16, 5)", "(16, 5)"]


def test_spec_example2_prints_one_norm_per_regularization_strength():
    output, _ = run_block(spec_blocks()[3])
    lines = re.findall(r"L2=(\S+): user_emb norm = (\d+\.\d{4})$", output, re.M)
    assert [strength for strength, _ in lines] == ["0.0", "0.0001", "0.001", "0.01"]
    assert all(float(norm) > 0 for _, norm in lines)


@pytest.mark.slow
def test_spec_example3_runs_at_production_scale():
    output, namespace = run_block(spec_blocks()[4])
    assert output.strip() == "Processed 512 users with 100 items"
    assert tuple(namespace["user_emb"].shape) == (512, 64)
    assert tuple(namespace["item_emb"].shape) == (512, 100, 64)
    layer = namespace["embedding"]
    assert tuple(layer.item_embeddings.shape) == (10_000_000, 64)
