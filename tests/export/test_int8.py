"""The int8 (compressed exact) retrieve graph in onnxruntime vs exact float32 top-k."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.onnx.int8 import (
    approx_scores,
    choose_rescore,
    int8_graph,
    max_rescore,
    quantize_items,
)
from export.onnx.ivf_index import scoring_items, scoring_users

K = 10
NONE = np.full((1, 1), -1, np.int64)


def _tables(kind: str, n: int = 4000, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    if kind == "planted":
        c = rng.normal(size=(30, d)).astype(np.float32) * 3
        items = c[rng.integers(30, size=n)] + rng.normal(size=(n, d))
        users = c[rng.integers(30, size=200)] + rng.normal(size=(200, d))
    else:  # anisotropic Gaussian, variance ~ 1/sqrt(i)
        scale = (1.0 / np.sqrt(np.arange(1, d + 1))) ** 0.5
        items, users = rng.normal(size=(n, d)) * scale, rng.normal(size=(200, d)) * scale
    return users.astype(np.float32), items.astype(np.float32)


def _exact(users, items, rows, normalization, exclude=()):
    u = scoring_users(users[rows], normalization)
    s = u @ scoring_items(items, normalization).T
    s[:, list(exclude)] = -np.inf
    ids = np.argsort(-s, axis=1, kind="stable")[:, :K]
    return ids, np.take_along_axis(s, ids, axis=1)


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(sess, users, exclude=NONE, rescore=0):
    users = np.asarray(users, np.int64)
    return sess.run(["top_item_ids", "top_scores"], {
        "user_id": users, "exclude_item_ids": np.asarray(exclude, np.int64),
        "rescore": np.broadcast_to(np.asarray(rescore, np.int64), users.shape).copy()})


@pytest.fixture(scope="module", params=[("planted", "sqrt_dim"), ("hard", "cosine"),
                                        ("hard", "sqrt_dim")])
def case(request):
    kind, normalization = request.param
    users, items = _tables(kind)
    table = quantize_items(items, normalization)
    rescore, agreement = choose_rescore(table, users, k=K)
    sess = _session(int8_graph(table, users, k=K, rescore=rescore))
    return users, items, table, rescore, agreement, sess


def test_checker_standard_ops_and_inputs(case):
    users, _, table, rescore, _, _ = case
    proto = int8_graph(table, users, k=K, rescore=rescore)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["user_id", "exclude_item_ids", "rescore"]
    assert {n.domain for n in proto.graph.node} == {""}
    assert "MatMulInteger" in {n.op_type for n in proto.graph.node}


def test_default_rescore_answers_exact_float32_top_k(case):
    users, items, table, rescore, agreement, sess = case
    assert agreement == 1.0 and rescore <= 8
    rows = np.arange(200)
    ids, scores = _run(sess, rows)
    want_ids, want_scores = _exact(users, items, rows, table.normalization)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_scores_are_exact_even_when_a_shallow_rescore_misses(case):
    users, items, table, _, _, sess = case
    ids, scores = _run(sess, np.arange(50), rescore=1)
    exact = scoring_users(users[:50], table.normalization) @ scoring_items(
        items, table.normalization).T
    np.testing.assert_allclose(scores, np.take_along_axis(exact, ids, axis=1), rtol=1e-5,
                               atol=1e-5)


def test_exclusions_respected_and_invalid_ignored(case):
    users, items, table, _, _, sess = case
    top = _run(sess, np.arange(4))[0]
    junk = np.array([-1, -7, table.num_items, 2**62, -(2**62)])
    exclude = np.concatenate([top[:, :3], np.tile(junk, (4, 1))], axis=1)
    ids, _ = _run(sess, np.arange(4), exclude)
    for row in range(4):
        want, _ = _exact(users, items, [row], table.normalization, exclude=top[row, :3])
        np.testing.assert_array_equal(ids[row], want[0])
    broadcast, _ = _run(sess, np.arange(4), top[:1, :5])  # [1, M] for the whole batch
    assert not set(top[0, :5]) & set(broadcast.ravel())


def test_unknown_users_get_empty_rows_and_rows_keep_their_own_rescore(case):
    users, items, table, rescore, _, sess = case
    rows = np.array([0, -1, 5, 10**9, 7, 3])
    asked = np.array([1, 4, 0, 2, max_rescore(table.num_items, K, 16) + 9, -2])
    ids, scores = _run(sess, rows, rescore=asked)
    assert (ids[[1, 3]] == -1).all() and np.isneginf(scores[[1, 3]]).all()
    for b in (0, 2, 4, 5):
        alone = _run(sess, rows[b:b + 1], rescore=asked[b:b + 1])
        np.testing.assert_array_equal(ids[b], alone[0][0])


def test_k_beyond_the_catalogue_pads_and_empty_batch():
    users, items = _tables("planted", n=7, d=4)
    table = quantize_items(items, "sqrt_dim")
    sess = _session(int8_graph(table, users, k=K, rescore=2))
    ids, scores = _run(sess, np.array([0]))
    assert sorted(ids[0, :7].tolist()) == list(range(7)) and (ids[0, 7:] == -1).all()
    assert np.isneginf(scores[0, 7:]).all()
    empty = _run(sess, np.zeros(0, np.int64))
    assert empty[0].shape == (0, K)


def test_numpy_approximation_matches_the_graphs_ranking():
    users, items = _tables("hard", n=640)
    table = quantize_items(items, "sqrt_dim")
    approx = approx_scores(table, users[:3])
    exact = scoring_users(users[:3], "sqrt_dim") @ items.T
    corr = np.corrcoef(approx.ravel(), exact.ravel())[0, 1]
    assert corr > 0.99 and approx.dtype == np.int32
