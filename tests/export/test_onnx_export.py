"""onnxruntime runs the converted graphs exactly like the TF graphs and the trained model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export.onnx.convert import check_onnx, convert_graph, load_session
from export.onnx.graphs import serving_graph
from export.onnx.weights import bake_tables
from export.parity import compare, rerank_reference, retrieve_reference
from kmr import contract
from tests.support.export_helpers import run_session, tiny_model

NU, NI, K = 40, 300, 10
BAD_USERS = [-1, NU, 2**62, -(2**62)]
BAD_ITEMS = [-1, NI, 2**62, -(2**62)]


@pytest.fixture(scope="module", params=["sqrt_dim", "cosine"])
def exported(request, tmp_path_factory):
    """(model, {kind: (graph, session)}) with the rerank graph inline and retrieve external."""
    model = tiny_model(NU, NI, normalization=request.param)
    out = {}
    for kind, threshold in ((contract.GRAPH_RERANK, 1 << 30), (contract.GRAPH_RETRIEVE, 0)):
        graph = serving_graph(model, kind, K)
        folder = tmp_path_factory.mktemp(f"{kind}_{request.param}")
        converted = convert_graph(graph, folder, external_threshold_bytes=threshold)
        out[kind] = (graph, load_session(converted.path), converted)
    return model, out


def _assert_parity(out, ref, tf_out=None):
    diff, ids_equal, _, ok = compare(out, ref)
    assert ids_equal, {n: (out[n], ref[n]) for n in ref}
    assert ok and diff <= 1e-5, diff
    if tf_out is not None:
        for name in ref:
            if name == contract.TOP_SCORES:
                np.testing.assert_allclose(out[name], tf_out[name], atol=1e-5)
            else:
                np.testing.assert_array_equal(out[name], tf_out[name])


@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("n", [1, 5, 100])
def test_rerank_onnx_matches_tf_and_keras_when_ids_valid(exported, batch, n):
    model, graphs = exported
    graph, session, _ = graphs[contract.GRAPH_RERANK]
    rng = np.random.default_rng(batch * 1000 + n)
    feed = {contract.USER_ID: rng.integers(0, NU, batch),
            contract.ITEM_IDS: rng.integers(0, NI, (batch, n))}
    out = run_session(session, contract.GRAPH_RERANK, feed)
    _assert_parity(out, rerank_reference(model, *feed.values(), K), graph.run_tf(feed))
    positions, scores = model(list(feed.values()))
    width = min(K, n)
    np.testing.assert_array_equal(out[contract.TOP_POSITIONS][:, :width], np.asarray(positions))
    np.testing.assert_allclose(out[contract.TOP_SCORES][:, :width], np.asarray(scores), atol=1e-5)
    if n < K:
        assert (out[contract.TOP_ITEM_IDS][:, n:] == contract.INVALID_ID).all()


@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("m", [0, 1, 5, 100])
def test_retrieve_onnx_matches_tf_when_exclusions_vary(exported, batch, m):
    model, graphs = exported
    graph, session, _ = graphs[contract.GRAPH_RETRIEVE]
    rng = np.random.default_rng(batch * 1000 + m)
    users = rng.integers(0, NU, batch)
    exclude = rng.integers(-1, NI, (batch, m))
    if m:
        best = retrieve_reference(model, users, np.full((batch, 1), -1), K)
        exclude[:, 0] = best[contract.TOP_ITEM_IDS][:, 0]  # the best item must disappear
    feed = {contract.USER_ID: users, contract.EXCLUDE_ITEM_IDS: exclude}
    out = run_session(session, contract.GRAPH_RETRIEVE, feed)
    _assert_parity(out, retrieve_reference(model, users, exclude, K), graph.run_tf(feed))


@pytest.mark.parametrize("kind", contract.GRAPH_KINDS)
def test_graph_onnx_returns_invalid_rows_when_users_out_of_range(exported, kind):
    model, graphs = exported
    graph, session, _ = graphs[kind]
    users = np.array([3, *BAD_USERS, 5])
    ids = np.tile(np.arange(20), (len(users), 1))
    feed = {contract.USER_ID: users, contract.INPUTS[kind][1]: ids}
    out = run_session(session, kind, feed)
    assert (out[contract.TOP_ITEM_IDS][1:-1] == contract.INVALID_ID).all()
    assert np.isneginf(out[contract.TOP_SCORES][1:-1]).all()
    assert (out[contract.TOP_ITEM_IDS][[0, -1]] >= 0).all()
    ref = (rerank_reference if kind == contract.GRAPH_RERANK else retrieve_reference)
    _assert_parity(out, ref(model, users, ids, K), graph.run_tf(feed))


def test_rerank_onnx_masks_candidates_when_item_ids_out_of_range(exported):
    model, graphs = exported
    graph, session, _ = graphs[contract.GRAPH_RERANK]
    items = np.array([[4, *BAD_ITEMS, 9], [*BAD_ITEMS, 1, 2]])
    feed = {contract.USER_ID: np.array([1, 2]), contract.ITEM_IDS: items}
    out = run_session(session, contract.GRAPH_RERANK, feed)
    assert sorted(out[contract.TOP_ITEM_IDS][0, :2]) == [4, 9]
    assert sorted(out[contract.TOP_ITEM_IDS][1, :2]) == [1, 2]
    assert (out[contract.TOP_ITEM_IDS][:, 2:] == contract.INVALID_ID).all()
    assert (out[contract.TOP_POSITIONS][:, 2:] == -1).all()
    _assert_parity(out, rerank_reference(model, *feed.values(), K), graph.run_tf(feed))


def test_retrieve_onnx_ignores_exclusions_when_out_of_range(exported):
    model, graphs = exported
    _, session, _ = graphs[contract.GRAPH_RETRIEVE]
    users = np.array([1, 2])
    plain = run_session(session, contract.GRAPH_RETRIEVE,
                        {contract.USER_ID: users, contract.EXCLUDE_ITEM_IDS: np.full((2, 1), -1)})
    bad = np.array([BAD_ITEMS, BAD_ITEMS])
    out = run_session(session, contract.GRAPH_RETRIEVE,
                      {contract.USER_ID: users, contract.EXCLUDE_ITEM_IDS: bad})
    np.testing.assert_array_equal(out[contract.TOP_ITEM_IDS], plain[contract.TOP_ITEM_IDS])


def test_convert_graph_writes_external_data_when_threshold_zero(exported):
    _, graphs = exported
    _, _, converted = graphs[contract.GRAPH_RETRIEVE]
    assert converted.external_data
    data = converted.path.parent / contract.ONNX_WEIGHTS_FILE
    assert data.is_file() and data.stat().st_size >= 4 * 8 * (NU + NI)
    proto = onnx.load(str(converted.path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL
               for t in proto.graph.initializer if t.name.startswith("kmr_"))
    assert converted.path.stat().st_size < 100_000


def test_convert_graph_writes_inline_weights_when_below_threshold(exported):
    _, graphs = exported
    _, _, converted = graphs[contract.GRAPH_RERANK]
    assert not converted.external_data
    assert not (converted.path.parent / contract.ONNX_WEIGHTS_FILE).exists()


@pytest.mark.parametrize("kind", contract.GRAPH_KINDS)
def test_onnx_model_has_contract_names_and_dtypes_when_converted(exported, kind):
    _, graphs = exported
    _, session, converted = graphs[kind]
    check_onnx(converted.path, kind)
    assert [i.name for i in session.get_inputs()] == list(contract.INPUTS[kind])
    assert all(i.type == "tensor(int64)" for i in session.get_inputs())
    types = {o.name: o.type for o in session.get_outputs()}
    assert list(types) == list(contract.OUTPUTS[kind])
    assert types[contract.TOP_SCORES] == "tensor(float)"
    assert all(t == "tensor(int64)" for n, t in types.items() if n != contract.TOP_SCORES)
    assert session.get_inputs()[0].shape[0] != 1  # dynamic batch


def test_retrieve_onnx_is_one_matmul_on_the_stored_table_when_converted(exported):
    _, graphs = exported
    _, _, converted = graphs[contract.GRAPH_RETRIEVE]
    proto = onnx.load(str(converted.path), load_external_data=False)
    matmuls = [n for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert len(matmuls) == 1 and matmuls[0].input[1] == "kmr_item_table_t"
    assert not any(n.op_type == "Transpose" for n in proto.graph.node)


def test_bake_tables_raises_when_input_missing(exported):
    model, _ = exported
    graph = serving_graph(model, contract.GRAPH_RERANK, K)
    with pytest.raises(ValueError, match="no input"):
        bake_tables(onnx.ModelProto(), graph.tables, ".", external_threshold_bytes=0)


def test_retrieve_onnx_returns_k_columns_when_k_exceeds_catalogue(tmp_path):
    model = tiny_model(4, 5)
    graph = serving_graph(model, contract.GRAPH_RETRIEVE, 20)
    session = load_session(convert_graph(graph, tmp_path).path)
    feed = {contract.USER_ID: np.array([0, 9]), contract.EXCLUDE_ITEM_IDS: np.array([[1], [1]])}
    out = run_session(session, contract.GRAPH_RETRIEVE, feed)
    assert out[contract.TOP_ITEM_IDS].shape == (2, 20)
    _assert_parity(out, retrieve_reference(model, *feed.values(), 20), graph.run_tf(feed))


def test_convert_graph_reports_both_causes_when_tf2onnx_and_its_fallback_fail(tmp_path,
                                                                             monkeypatch):
    import export.onnx.convert as convert

    calls = []

    def failing(function, *, input_signature, opset):
        calls.append(input_signature)
        raise ValueError(f"cause {len(calls)}")

    monkeypatch.setattr(convert.tf2onnx.convert, "from_function", failing)
    graph = serving_graph(tiny_model(num_users=3, num_items=5, dim=2), contract.GRAPH_RERANK, 2)
    with pytest.raises(convert.ConversionError) as info:
        convert_graph(graph, tmp_path)
    message = str(info.value)
    assert "dynamic table shapes: ValueError: cause 1" in message
    assert "static table shapes: ValueError: cause 2" in message
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []
