"""`kmr-export tune`: bounded search, early-stopped epochs, settings that train can read."""

from __future__ import annotations

import json

from export.cli import main
from kmr.data.synthetic import make_synthetic
from kmr.training.settings import TrainSettings
from kmr.training.tune import candidates, tune

SMALL = ["--synthetic-users", "80", "--synthetic-items", "50", "--synthetic-interactions", "6"]


def test_candidates_change_one_axis_at_a_time_when_built_from_a_grid() -> None:
    assert candidates({"a": (1, 2), "b": (3,)}) == [{}, {"a": 1}, {"a": 2}, {"b": 3}]


def test_tune_keeps_best_epoch_and_skips_candidates_when_budget_runs_out() -> None:
    data = make_synthetic(num_users=60, num_items=40, interactions_per_user=6)
    result = tune(data, TrainSettings(epochs=3, embedding_dim=4),
                  grid={"temperature": (0.2, 0.3)}, budget_seconds=1e-9)
    assert [row.changes for row in result.rows] == [{}]  # the first candidate always runs
    assert result.skipped == [{"temperature": 0.2}, {"temperature": 0.3}]
    assert 1 <= result.best.epochs <= 3 and result.best.epochs == result.rows[0].best_epoch


def test_tune_cli_writes_settings_that_train_reads_when_run(tmp_path, capsys) -> None:
    out = tmp_path / "tuned.json"
    assert main(["tune", *SMALL, "--out", str(out), "--budget-s", "0.001",
                 "--max-epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "(defaults)" in printed and "skipped" in printed
    record = json.loads(out.read_text())
    assert record["format"] == "kmr-tuned-settings/1"
    assert record["settings"]["epochs"] in (1, 2)
    record["settings"]["embedding_dim"] = 6  # train must take it from the file
    out.write_text(json.dumps(record))
    assert main(["train", *SMALL, "--settings", str(out), "--out", str(tmp_path / "art"),
                 "--quiet", "--no-refit"]) == 0
    saved = json.loads((tmp_path / "art" / "train_settings.json").read_text())
    assert saved["settings"]["embedding_dim"] == 6


def test_train_cli_refuses_settings_file_when_it_is_not_from_tune(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"nope": 1}')
    assert main(["train", *SMALL, "--settings", str(bad), "--out", str(tmp_path / "a")]) == 1
    assert "not a settings file written by tune" in capsys.readouterr().err


def test_train_cli_names_the_setting_when_settings_file_value_out_of_range(tmp_path,
                                                                           capsys) -> None:
    bad = tmp_path / "tuned.json"
    bad.write_text('{"settings": {"ridge_shrinkage": -1.0}}')
    assert main(["train", *SMALL, "--settings", str(bad), "--out", str(tmp_path / "a")]) == 1
    assert "ridge_shrinkage must be a finite number >= 0, got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
