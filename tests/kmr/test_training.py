"""Tests of kmr.training.fit, kmr.training.objectives, kmr.training.evaluation and the train CLI."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from export.cli import main as cli_main
from kmr import contract
from kmr.data.interactions import Interactions
from kmr.data.synthetic import make_synthetic
from kmr.layers import NormalizedDotProductSimilarity
from kmr.models import recommender_parts
from kmr.training.artifacts import CURVE_FILE, SETTINGS_FILE
from kmr.training.evaluation import (
    HoldoutSplit,
    evaluate_ranking,
    holdout_split,
    popularity_scorer,
)
from kmr.training.fit import TrainSettings, embedding_scorer, fit_recommender, train_recommender
from kmr.training.objectives import GRADIENT_OBJECTIVES, pairwise_scores
from kmr.vocabulary import Vocabulary

FAST = TrainSettings(epochs=5, embedding_dim=32, learning_rate=0.005)


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(num_users=1000, num_items=500, interactions_per_user=20, seed=0)


@pytest.fixture(scope="module")
def trained(synthetic):
    return train_recommender(synthetic, FAST, verbose=0)


def test_train_recommender_beats_popularity_when_data_has_taste_structure(trained):
    model, pop = trained.metrics["model"], trained.metrics["popularity"]
    # 1000 test users: the standard error of each recall is < 0.016, so a 0.15 gap
    # (about 10 standard errors) cannot come from chance.
    assert model.recall >= pop.recall + 0.15, (model, pop)
    assert model.ndcg > pop.ndcg


def test_fit_recommender_gives_identical_weights_when_seed_equal(synthetic):
    small = synthetic.subset(synthetic.users < 200)
    settings = TrainSettings(epochs=2, embedding_dim=8)
    a = fit_recommender(small, settings, verbose=0).model.get_weights()
    b = fit_recommender(small, settings, verbose=0).model.get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("objective", GRADIENT_OBJECTIVES)
def test_fit_recommender_lowers_loss_when_objective_chosen(synthetic, objective):
    small = synthetic.subset(synthetic.users < 300)
    settings = TrainSettings(epochs=3, embedding_dim=8, objective=objective, learning_rate=0.01)
    fit = fit_recommender(small, settings, verbose=0)
    assert fit.objective == objective
    assert fit.loss[-1] < fit.loss[0]


def test_resolved_objective_switches_to_sampled_softmax_when_catalogue_large():
    settings = TrainSettings(objective="auto", full_softmax_max_items=1000)
    assert settings.resolved_objective(1000) == "full_softmax"
    assert settings.resolved_objective(1001) == "sampled_softmax"


def test_pairwise_scores_equal_similarity_layer_when_normalization_varies():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 8)).astype("f4"), rng.normal(size=(5, 8)).astype("f4")
    for normalization in ("sqrt_dim", "cosine"):
        sim = NormalizedDotProductSimilarity(normalization)
        expected = np.asarray(sim([a[:, None], b[None]]))
        np.testing.assert_allclose(np.asarray(pairwise_scores(sim, a, b)), expected, atol=1e-5)


def test_embedding_scorer_equals_model_scores_when_items_given(trained):
    model = trained.model
    items = np.tile(np.arange(model_items(model)), (3, 1))
    users = np.array([0, 5, 9])
    _, scores = model([users, items])
    top = np.sort(embedding_scorer(model)(users), axis=1)[:, ::-1][:, : scores.shape[1]]
    np.testing.assert_allclose(np.asarray(scores), top, rtol=1e-5, atol=1e-6)


def model_items(model: keras.Model) -> int:
    return recommender_parts(model).embedding.num_items


def test_holdout_split_holds_out_latest_when_timestamps_exist():
    data = Interactions(
        users=np.array([0, 0, 0, 1, 2, 2]),
        items=np.array([0, 1, 2, 0, 1, 2]),
        timestamps=np.array([5.0, 9.0, 1.0, 3.0, 2.0, 2.0]),
        user_vocab=Vocabulary([0, 1, 2]),
        item_vocab=Vocabulary([0, 1, 2]),
    )
    split = holdout_split(data)
    assert split.test_users.tolist() == [0, 2]
    assert split.test_items.tolist() == [1, 2]  # user 2: equal times, the later row
    assert len(split.train) == 4 and 1 in split.train.users.tolist()


def test_evaluate_ranking_excludes_training_items_when_ranking():
    train = Interactions(
        users=np.array([0]), items=np.array([0]), timestamps=None,
        user_vocab=Vocabulary([0]), item_vocab=Vocabulary([0, 1, 2]),
    )
    split = HoldoutSplit(train=train, test_users=np.array([0]), test_items=np.array([2]))
    # Item 0 (a training item) scores highest but must not take the only slot.
    metrics = evaluate_ranking(lambda u: np.array([[9.0, 1.0, 2.0]]), split, k=1)
    assert metrics.recall == 1.0 and metrics.ndcg == 1.0 and metrics.hit_rate == 1.0


def test_evaluate_ranking_scores_popularity_when_baseline_used(synthetic):
    split = holdout_split(synthetic)
    metrics = evaluate_ranking(popularity_scorer(split.train), split)
    assert 0.0 < metrics.recall < 0.5 and metrics.num_users == synthetic.num_users


def test_saved_model_gives_identical_scores_when_reloaded(tmp_path, synthetic):
    out = tmp_path / "artifacts"
    result = train_recommender(
        synthetic.subset(synthetic.users < 100), TrainSettings(epochs=1, embedding_dim=8),
        out, verbose=0,
    )
    assert sorted(p.name for p in out.iterdir()) == sorted([
        contract.MODEL_FILE, contract.USER_VOCAB_FILE, contract.ITEM_VOCAB_FILE,
        contract.METRICS_FILE, CURVE_FILE, SETTINGS_FILE,
    ])
    reloaded = keras.saving.load_model(out / contract.MODEL_FILE)
    users = np.array([0, 1, 2], dtype=np.int64)
    items = np.tile(np.arange(20, dtype=np.int64), (3, 1))
    for a, b in zip(result.model([users, items]), reloaded([users, items]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    metrics = json.loads((out / contract.METRICS_FILE).read_text())
    assert {"model", "popularity", "holdout_fit", "final_fit"} <= set(metrics)
    assert "recall@10" in metrics["model"] and metrics["saved_model"] == "final_fit"
    assert Vocabulary.load(out / contract.ITEM_VOCAB_FILE) == synthetic.item_vocab


def test_train_cli_exits_zero_and_writes_folder_when_synthetic(tmp_path, capsys):
    out = tmp_path / "art"
    code = cli_main([
        "train", "--out", str(out), "--epochs", "1", "--dim", "8", "--quiet",
        "--synthetic-users", "200", "--synthetic-items", "100",
    ])
    assert code == 0
    assert (out / contract.MODEL_FILE).exists()
    assert capsys.readouterr().out == ""
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temp folder left


def test_train_cli_exits_one_without_traceback_when_data_bad(tmp_path, capsys):
    data = tmp_path / "ratings.csv"
    data.write_text("userId,movieId,rating\n1,2,five\n")
    out = tmp_path / "art"
    code = cli_main(["train", "--data", str(data), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "ratings.csv, line 2" in err and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ratings.csv"]


def test_train_cli_exits_one_when_out_is_foreign_folder(tmp_path, capsys):
    out = tmp_path / "art"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = cli_main(["train", "--out", str(out), "--epochs", "1", "--quiet"])
    assert code == 1 and "refusing to replace" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_train_cli_exits_one_when_flag_out_of_range(tmp_path, capsys):
    code = cli_main(["train", "--out", str(tmp_path / "a"), "--epochs", "0"])
    assert code == 1 and "--epochs" in capsys.readouterr().err


def test_train_cli_exits_nonzero_in_subprocess_when_data_missing(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "export", "train", "--data", str(tmp_path / "x.csv"),
         "--out", str(tmp_path / "a")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "x.csv: no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_ranking_equals_reference_when_several_items_held_out():
    data = make_synthetic(num_users=60, num_items=25, interactions_per_user=6, seed=2)
    split = holdout_split(data, holdout_per_user=3)
    table = np.random.default_rng(0).standard_normal(
        (data.num_users, data.num_items)).astype(np.float32)
    metrics = evaluate_ranking(lambda users: table[users], split, k=4)
    train = set(zip(split.train.users.tolist(), split.train.items.tolist(), strict=True))
    users = sorted(set(split.test_users.tolist()))
    recall = ndcg = hit = 0.0
    for u in users:
        held = set(split.test_items[split.test_users == u].tolist())
        assert len(held) == 3 and not held & {i for v, i in train if v == u}
        unseen = [i for i in range(data.num_items) if (u, i) not in train]
        hits = [i in held for i in sorted(unseen, key=lambda i: -table[u, i])[:4]]
        recall += sum(hits) / len(held)
        hit += any(hits)
        ideal = sum(1 / np.log2(r + 2) for r in range(min(len(held), 4)))
        ndcg += sum(h / np.log2(r + 2) for r, h in enumerate(hits)) / ideal
    assert metrics.num_users == len(users) == data.num_users
    assert metrics.recall == pytest.approx(recall / len(users))
    assert metrics.ndcg == pytest.approx(ndcg / len(users))
    assert metrics.hit_rate == pytest.approx(hit / len(users))


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--dim", "0", "--dim must be a finite number >= 1"),
     ("--lr", "0", "--lr must be a finite number > 0"),
     ("--l2", "nan", "--l2 must be a finite number >= 0"),
     ("--batch-size", "0", "--batch-size must be"),
     ("--ridge-shrinkage", "-1", "--ridge-shrinkage must be a finite number >= 0, got -1.0"),
     ("--ridge-shrinkage", "inf", "--ridge-shrinkage must be a finite number >= 0, got inf"),
     ("--lr", "inf", "--lr must be a finite number > 0, got inf")],
)
def test_train_cli_names_the_flag_when_flag_out_of_range(tmp_path, capsys, flag, value, message):
    code = cli_main(["train", "--out", str(tmp_path / "a"), flag, value])
    assert code == 1 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_demo_cli_exits_one_before_training_when_flag_out_of_range(tmp_path, capsys):
    code = cli_main(["demo", "--workdir", str(tmp_path / "w"), "--dim", "0"])
    assert code == 1 and "--dim must be a finite number >= 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("typed", "sep"), [("\\t", "\t"), (";", ";"), ("\u00a7", "\u00a7")])
def test_train_cli_reads_file_when_sep_given(tmp_path, typed, sep):
    import argparse

    from export.cli import train as train_command

    path = tmp_path / "r.txt"
    path.write_text(f"1{sep}10{sep}5\n1{sep}11{sep}5\n2{sep}10{sep}4\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    args = parser.parse_args(["--data", str(path), "--out", "x", "--sep", typed])
    data = train_command._load(args, seed=0)
    assert data.item_vocab.ids == (10, 11) and len(data) == 3


def test_lazy_adam_equals_adam_when_gradient_covers_every_row_once():
    import tensorflow as tf

    from kmr.training.optimizers import LazyAdam

    rng = np.random.default_rng(0)
    start = rng.normal(size=(5, 3)).astype("f4")
    grads = [rng.normal(size=(5, 3)).astype("f4") for _ in range(3)]
    dense, lazy = keras.Variable(start), keras.Variable(start)
    adam, lazy_adam = keras.optimizers.Adam(0.1), LazyAdam(0.1)
    for g in grads:
        adam.apply([tf.constant(g)], [dense])
        order = np.array([3, 1, 4, 0, 2])
        lazy_adam.apply([tf.IndexedSlices(tf.constant(g[order]), tf.constant(order),
                                          tf.constant([5, 3]))], [lazy])
    np.testing.assert_allclose(lazy.numpy(), dense.numpy(), rtol=1e-5, atol=1e-6)


def test_lazy_adam_leaves_rows_untouched_when_not_in_gradient():
    import tensorflow as tf

    from kmr.training.optimizers import LazyAdam

    table = keras.Variable(np.ones((4, 2), "f4"))
    optimizer = LazyAdam(0.1)
    for _ in range(2):
        optimizer.apply([tf.IndexedSlices(tf.ones((1, 2)), tf.constant([2]),
                                          tf.constant([4, 2]))], [table])
    assert np.array_equal(table.numpy()[[0, 1, 3]], np.ones((3, 2), "f4"))
    assert (table.numpy()[2] < 1).all()
