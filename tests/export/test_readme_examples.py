"""The README's Python examples run as written."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _block(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    after = text.split(f"<!-- readme-example: {marker} -->", 1)[1]
    return after.split("```python", 1)[1].split("```", 1)[0]


def test_readme_export_api_example_publishes_both_graphs_when_run(tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_block("export-api"), str(README), "exec"), {})  # noqa: S102 - our README
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["mine_rerank 1 True", "mine_retrieve 1 True"]
    assert (tmp_path / "model_repository" / "mine_retrieve" / "1" / "model.onnx").is_file()
