"""The IVF retrieve graph: onnxruntime vs the numpy reference, recall vs exact, the contract."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.onnx.ivf import (
    build_index,
    build_ivf_retrieve,
    choose_nprobe,
    exact_topk,
    ivf_graph,
    ivf_reference,
    recall_at_k,
)

K = 10
NONE = np.full((1, 1), -1, np.int64)


def _planted(seed: int, n: int = 3000, d: int = 16, centers: int = 40):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)).astype(np.float32) * 3
    items = c[rng.integers(centers, size=n)] + rng.normal(size=(n, d)).astype(np.float32)
    users = c[rng.integers(centers, size=300)] + rng.normal(size=(300, d)).astype(np.float32)
    return users.astype(np.float32), items.astype(np.float32)


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(sess, users, exclude=NONE, nprobe=None):
    feed = {"user_id": np.asarray(users, np.int64), "exclude_item_ids": np.asarray(exclude,
                                                                                np.int64)}
    feed["nprobe"] = np.full(len(feed["user_id"]), 0 if nprobe is None else nprobe, np.int64)
    return sess.run(["top_item_ids", "top_scores"], feed)


@pytest.fixture(scope="module", params=["sqrt_dim", "cosine"])
def case(request):
    users, items = _planted(1)
    index = build_index(items, nlist=50, normalization=request.param)
    nprobe = choose_nprobe(index, users, items, k=K)
    sess = _session(ivf_graph(index, users, k=K, nprobe=nprobe))
    return users, items, index, nprobe, sess


def test_checker_and_contract(case):
    users, _, index, nprobe, _ = case
    proto = ivf_graph(index, users, k=K, nprobe=nprobe)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["user_id", "exclude_item_ids", "nprobe"]
    assert [o.name for o in proto.graph.output] == ["top_item_ids", "top_scores"]
    assert {n.domain for n in proto.graph.node} == {""}


@pytest.mark.parametrize("nprobe", [1, 3, None, 10**6])
def test_parity_with_reference(case, nprobe):
    users, _, index, default, sess = case
    ids, scores = _run(sess, np.arange(100), nprobe=nprobe)
    ref_ids, ref_scores = ivf_reference(index, users, np.arange(100), NONE, k=K,
                                        nprobe=default if nprobe is None else nprobe)
    np.testing.assert_array_equal(ids, ref_ids)
    # rtol: the batch may score with one GEMM instead of batched MatMuls (rounding)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5, rtol=1e-6)


def test_recall_default_and_full_probe(case):
    users, items, index, _, sess = case
    exact_ids, exact_scores = exact_topk(users, items, np.arange(300), k=K,
                                         normalization=index.normalization)
    assert recall_at_k(_run(sess, np.arange(300))[0], exact_ids) >= 0.95
    ids, scores = _run(sess, np.arange(300), nprobe=index.num_lists)
    assert recall_at_k(ids, exact_ids) == 1.0
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5, rtol=1e-6)  # |s| ~ 50


def test_nprobe_bounds_are_clamped_and_zero_is_the_default(case):
    _, _, index, default, sess = case
    users = np.arange(20)
    assert default > 1
    at_default = _run(sess, users, nprobe=default)[0]
    np.testing.assert_array_equal(_run(sess, users, nprobe=0)[0], at_default)
    np.testing.assert_array_equal(_run(sess, users, nprobe=-5)[0], at_default)
    np.testing.assert_array_equal(_run(sess, users, nprobe=index.num_lists + 7)[0],
                                  _run(sess, users, nprobe=index.num_lists)[0])


def test_exclusions_respected_and_invalid_ignored(case):
    users, _, index, _, sess = case
    full = index.num_lists
    top = _run(sess, np.arange(4), nprobe=full)[0]
    junk = np.array([-1, -7, index.num_items, 2**62, -(2**62)])
    exclude = np.concatenate([top[:, :3], np.tile(junk, (4, 1))], axis=1)
    ids, scores = _run(sess, np.arange(4), exclude, nprobe=full)
    for row in range(4):
        assert not set(top[row, :3]) & set(ids[row])
        np.testing.assert_array_equal(ids[row, :K - 3], top[row, 3:])
    ref = ivf_reference(index, users, np.arange(4), exclude, k=K, nprobe=full)
    np.testing.assert_array_equal(ids, ref[0])
    only_junk = _run(sess, np.arange(4), np.tile(junk, (4, 1)), nprobe=full)[0]
    np.testing.assert_array_equal(only_junk, top)


def test_exclusions_of_unprobed_lists_and_broadcast(case):
    _, _, index, _, sess = case
    ids_all = _run(sess, np.arange(3), nprobe=1)[0]
    far = np.arange(index.num_items)[None, :]  # every item, most in unprobed lists
    ids, _ = _run(sess, np.arange(3), far, nprobe=1)  # [1, M] broadcast to the batch
    assert (ids == -1).all() and (ids_all >= 0).any()


def test_out_of_range_user_gets_empty_row(case):
    users, _, _, _, sess = case
    bad = np.array([0, -1, len(users), 2**62, -(2**62), 1])
    ids, scores = _run(sess, bad)
    assert (ids[1:5] == -1).all() and np.isneginf(scores[1:5]).all()
    good = _run(sess, np.array([0, 1]))
    np.testing.assert_array_equal(ids[[0, 5]], good[0])


def test_k_larger_than_probed_pads():
    users, items = _planted(2, n=40, d=4, centers=4)
    sess = _session(build_ivf_retrieve(users, items, k=60, nlist=4, nprobe=1))
    ids, scores = _run(sess, np.array([0]))
    filled = ids[0] >= 0
    assert 0 < filled.sum() < 40 and np.isneginf(scores[0][~filled]).all()
    assert (ids[0][filled.sum():] == -1).all()


def test_empty_exclusions_and_default_nprobe_metadata():
    users, items = _planted(3, n=500, d=8, centers=10)
    proto = build_ivf_retrieve(users, items, k=5, nlist=10, normalization="cosine")
    props = {p.key: p.value for p in proto.metadata_props}
    assert 1 <= int(props["nprobe"]) <= int(props["num_lists"])
    ids, _ = _run(_session(proto), np.arange(3), np.zeros((3, 0), np.int64))
    assert ids.shape == (3, 5) and (ids >= 0).all()


def test_each_row_keeps_its_own_nprobe_inside_a_batch(case):
    """Triton batches requests with different nprobe: no row may see another's lists."""
    users, _, index, default, sess = case
    rows = np.arange(12)
    asked = np.array([1, 2, 0, index.num_lists, 1, 3, -1, 5, 1, 2, 10**6, 1])
    feed = {"user_id": rows, "exclude_item_ids": NONE, "nprobe": asked}
    ids, scores = sess.run(["top_item_ids", "top_scores"], feed)
    for row, p in zip(rows, asked, strict=True):
        alone = _run(sess, [row], nprobe=int(p))
        np.testing.assert_array_equal(ids[row], alone[0][0])
        # ids equal; scores equal up to rounding (the batch may score all lists at once)
        np.testing.assert_allclose(scores[row], alone[1][0], atol=1e-6, rtol=1e-6)
    ref_ids, _ = ivf_reference(index, users, rows, NONE, k=K, nprobe=asked,
                               default_nprobe=default)
    np.testing.assert_array_equal(ids, ref_ids)


def test_broadcast_nprobe_and_empty_batch(case):
    _, _, _, _, sess = case
    one = sess.run(["top_item_ids"], {"user_id": np.arange(3), "exclude_item_ids": NONE,
                                      "nprobe": np.array([2])})[0]
    np.testing.assert_array_equal(one, _run(sess, np.arange(3), nprobe=2)[0])
    empty = sess.run(["top_item_ids"], {"user_id": np.zeros(0, np.int64),
                                        "exclude_item_ids": NONE,
                                        "nprobe": np.zeros(0, np.int64)})[0]
    assert empty.shape == (0, K)


def test_many_lists_score_every_slot_once_instead_of_gathering(case):
    """Past 2*B*p*D > L*(D+B) the graph scores all slots: same answer, bounded memory."""
    users, _, index, _, sess = case
    d, lists, b = users.shape[1], index.num_lists, 30
    few, many = 1, lists
    assert 2 * b * few * d < lists * (d + b) < 2 * b * many * d  # one case per branch
    for p in (few, many):
        ids, scores = _run(sess, np.arange(b), nprobe=p)
        ref_ids, ref_scores = ivf_reference(index, users, np.arange(b), NONE, k=K, nprobe=p)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5, rtol=1e-6)
