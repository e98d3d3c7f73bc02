"""The TF serving graphs follow the documented contract (before any ONNX conversion)."""

from __future__ import annotations

import numpy as np
import pytest

from export.onnx.graphs import serving_graph
from export.parity import compare, rerank_reference, retrieve_reference
from kmr import contract
from tests.support.export_helpers import tiny_model

NU, NI, K = 30, 200, 10
BAD_USERS = [-1, -5, NU, 2**62, -(2**62)]
BAD_ITEMS = [-1, -5, NI, 2**62, -(2**62)]


@pytest.fixture(scope="module")
def model():
    return tiny_model(NU, NI)


def test_serving_graph_raises_when_kind_unknown(model):
    with pytest.raises(ValueError, match="kind"):
        serving_graph(model, "ranker", K)


def test_serving_graph_raises_when_k_not_positive(model):
    with pytest.raises(ValueError, match="Expected a positive int"):
        serving_graph(model, contract.GRAPH_RERANK, 0)


@pytest.mark.parametrize("normalization", ["sqrt_dim", "cosine"])
def test_rerank_tf_matches_keras_model_when_ids_valid(normalization):
    model = tiny_model(NU, NI, normalization=normalization)
    graph = serving_graph(model, contract.GRAPH_RERANK, K)
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, NU, 7), rng.integers(0, NI, (7, 25))
    out = graph.run_tf({contract.USER_ID: users, contract.ITEM_IDS: items})
    positions, scores = model([users, items])
    np.testing.assert_array_equal(out[contract.TOP_POSITIONS], np.asarray(positions))
    np.testing.assert_allclose(out[contract.TOP_SCORES], np.asarray(scores), atol=1e-5)
    np.testing.assert_array_equal(
        out[contract.TOP_ITEM_IDS], np.take_along_axis(items, np.asarray(positions), 1)
    )


def test_rerank_tf_pads_with_invalid_when_fewer_than_k_candidates(model):
    graph = serving_graph(model, contract.GRAPH_RERANK, K)
    out = graph.run_tf({contract.USER_ID: np.array([1, 2]),
                        contract.ITEM_IDS: np.array([[3, 4, 5], [6, 7, 8]])})
    assert out[contract.TOP_ITEM_IDS].shape == (2, K)
    assert (out[contract.TOP_ITEM_IDS][:, 3:] == contract.INVALID_ID).all()
    assert (out[contract.TOP_POSITIONS][:, 3:] == -1).all()
    assert np.isneginf(out[contract.TOP_SCORES][:, 3:]).all()
    assert np.isfinite(out[contract.TOP_SCORES][:, :3]).all()


def test_rerank_tf_never_selects_invalid_candidates_when_ids_out_of_range(model):
    graph = serving_graph(model, contract.GRAPH_RERANK, K)
    items = np.array([[0, *BAD_ITEMS, 1]])
    out = graph.run_tf({contract.USER_ID: np.array([3]), contract.ITEM_IDS: items})
    assert sorted(out[contract.TOP_ITEM_IDS][0, :2]) == [0, 1]
    assert (out[contract.TOP_ITEM_IDS][0, 2:] == -1).all()
    assert set(out[contract.TOP_POSITIONS][0, :2]) == {0, len(BAD_ITEMS) + 1}


@pytest.mark.parametrize("kind", contract.GRAPH_KINDS)
def test_graph_tf_returns_invalid_row_when_user_out_of_range(model, kind):
    graph = serving_graph(model, kind, K)
    second = contract.INPUTS[kind][1]
    users = np.array([0, *BAD_USERS])
    ids = np.tile(np.arange(5), (len(users), 1))
    out = graph.run_tf({contract.USER_ID: users, second: ids})
    assert (out[contract.TOP_ITEM_IDS][0, :5] >= 0).all()
    assert (out[contract.TOP_ITEM_IDS][1:] == contract.INVALID_ID).all()
    assert np.isneginf(out[contract.TOP_SCORES][1:]).all()


def test_rerank_tf_breaks_ties_to_lower_position_when_scores_equal(model):
    graph = serving_graph(model, contract.GRAPH_RERANK, 3)
    out = graph.run_tf({contract.USER_ID: np.array([2]), contract.ITEM_IDS: np.array([[7, 7, 7]])})
    assert out[contract.TOP_POSITIONS].tolist() == [[0, 1, 2]]


def test_rerank_tf_returns_all_padding_when_no_candidates(model):
    graph = serving_graph(model, contract.GRAPH_RERANK, K)
    out = graph.run_tf({contract.USER_ID: np.array([1]),
                        contract.ITEM_IDS: np.zeros((1, 0), np.int64)})
    assert (out[contract.TOP_ITEM_IDS] == -1).all()


@pytest.mark.parametrize("normalization", ["sqrt_dim", "cosine"])
def test_retrieve_tf_matches_reference_when_excluding(normalization):
    model = tiny_model(NU, NI, normalization=normalization)
    graph = serving_graph(model, contract.GRAPH_RETRIEVE, K)
    users = np.array([0, 1, 2, -1])
    plain = retrieve_reference(model, users, np.full((4, 1), -1), K)
    exclude = np.full((4, 6), -1)
    exclude[:, :3] = plain[contract.TOP_ITEM_IDS][:, :3]  # drop each user's best three
    exclude[:, 3:5] = [NI, 2**62]
    out = graph.run_tf({contract.USER_ID: users, contract.EXCLUDE_ITEM_IDS: exclude})
    ref = retrieve_reference(model, users, exclude, K)
    diff, ids_equal, _, ok = compare(out, ref)
    assert ids_equal and ok, diff
    for row in range(3):
        assert not np.isin(out[contract.TOP_ITEM_IDS][row], exclude[row, :3]).any()


def test_retrieve_tf_pads_with_invalid_when_everything_excluded():
    model = tiny_model(4, 12)
    graph = serving_graph(model, contract.GRAPH_RETRIEVE, 5)
    exclude = np.array([list(range(9)) + [-1]])  # 3 items left for k=5
    out = graph.run_tf({contract.USER_ID: np.array([1]), contract.EXCLUDE_ITEM_IDS: exclude})
    assert sorted(out[contract.TOP_ITEM_IDS][0, :3]) == [9, 10, 11]
    assert out[contract.TOP_ITEM_IDS][0, 3:].tolist() == [-1, -1]


def test_rerank_reference_matches_tf_when_ids_mixed(model):
    graph = serving_graph(model, contract.GRAPH_RERANK, K)
    rng = np.random.default_rng(3)
    items = rng.integers(-3, NI + 3, (6, 15))
    users = np.array([0, 5, -1, NU, 7, 2**62])
    out = graph.run_tf({contract.USER_ID: users, contract.ITEM_IDS: items})
    diff, ids_equal, _, ok = compare(out, rerank_reference(model, users, items, K))
    assert ids_equal and ok, diff


def test_retrieve_tf_pads_with_invalid_when_k_exceeds_catalogue():
    model = tiny_model(4, 5)  # one block of 8 columns; k = 20 > 2 blocks
    graph = serving_graph(model, contract.GRAPH_RETRIEVE, 20)
    users = np.array([0, 1, -1])
    exclude = np.array([[2, -1], [-1, -1], [0, 1]])
    out = graph.run_tf({contract.USER_ID: users, contract.EXCLUDE_ITEM_IDS: exclude})
    assert out[contract.TOP_ITEM_IDS].shape == (3, 20)
    assert sorted(out[contract.TOP_ITEM_IDS][0, :4]) == [0, 1, 3, 4]
    assert (out[contract.TOP_ITEM_IDS][0, 4:] == -1).all()
    assert (out[contract.TOP_ITEM_IDS][2] == -1).all()
    diff, ids_equal, _, ok = compare(out, retrieve_reference(model, users, exclude, 20))
    assert ids_equal and ok, diff


def test_compare_fails_when_ids_wrong_but_scores_right():
    ref = {contract.TOP_ITEM_IDS: np.array([[4, 7, 1]]),
           contract.TOP_SCORES: np.array([[0.9, 0.5, 0.1]], np.float32)}
    wrong = {**ref, contract.TOP_ITEM_IDS: np.array([[5, 8, 1]])}  # off by one
    assert compare(wrong, ref)[3] is False
    # A real tie swap (equal scores, ids swapped) and a boundary tie still pass.
    tied = {contract.TOP_ITEM_IDS: np.array([[4, 7, 1]]),
            contract.TOP_SCORES: np.array([[0.9, 0.5, 0.5]], np.float32)}
    swapped = {**tied, contract.TOP_ITEM_IDS: np.array([[4, 1, 7]])}
    boundary = {**ref, contract.TOP_ITEM_IDS: np.array([[4, 7, 2]])}
    assert compare(swapped, tied)[1:] == (False, 2, True)
    assert compare(boundary, ref)[1:] == (False, 1, True)
