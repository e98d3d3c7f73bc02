"""Tiny contract-following ONNX graphs built by hand with ``onnx.helper``, and a helper
that writes them into a repository as python-backend models (shared by the e2e tests).

They follow the contract's names, dtypes, shapes and semantics (-1 candidates -> id -1 /
score -inf, results padded to k); the real graphs come from the export.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.triton import config as tc
from kmr import contract

MODEL_PY = Path(__file__).resolve().parents[2] / "export" / "triton" / "python_backend" / "model.py"
NUM_USERS, NUM_ITEMS, DIM, K = 7, 30, 4, 5
MAX_CANDIDATES, MAX_EXCLUDE = 20, 12
RNG = np.random.default_rng(0)
USER_TABLE = RNG.normal(size=(NUM_USERS, DIM)).astype(np.float32)
ITEM_TABLE = RNG.normal(size=(NUM_ITEMS, DIM)).astype(np.float32)


# -- tiny contract-following ONNX graphs ---------------------------------------------------
def _const(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _user_rows(n: helper) -> list:
    """Nodes: uvalid [B] bool, u [B, d] (invalid users read row 0 and are masked later)."""
    return [
        n("GreaterOrEqual", [contract.USER_ID, "zero"], ["u_ge"]),
        n("Less", [contract.USER_ID, "num_users"], ["u_lt"]),
        n("And", ["u_ge", "u_lt"], ["uvalid"]),
        n("Where", ["uvalid", contract.USER_ID, "zero"], ["usafe"]),
        n("Gather", ["U", "usafe"], ["u"], axis=0),
        n("Unsqueeze", ["uvalid", "axis1"], ["uvalid2"]),
    ]


def build_rerank_onnx(k: int = K) -> onnx.ModelProto:
    """rerank: score candidates, invalid -> -inf, pad to k, TopK; ids/positions -1 if -inf."""
    n = helper.make_node
    nodes = _user_rows(n) + [
        n("GreaterOrEqual", [contract.ITEM_IDS, "zero"], ["i_ge"]),
        n("Less", [contract.ITEM_IDS, "num_items"], ["i_lt"]),
        n("And", ["i_ge", "i_lt"], ["ivalid0"]),
        n("And", ["ivalid0", "uvalid2"], ["valid"]),
        n("Where", ["ivalid0", contract.ITEM_IDS, "zero"], ["isafe"]),
        n("Gather", ["V", "isafe"], ["v"], axis=0),
        n("Unsqueeze", ["u", "axis1"], ["u3"]),
        n("Mul", ["u3", "v"], ["prod"]),
        n("ReduceSum", ["prod", "axis2"], ["raw"], keepdims=0),
        n("Where", ["valid", "raw", "neg_inf"], ["scores"]),
        n("Where", ["valid", contract.ITEM_IDS, "minus1"], ["cand"]),
        n("Shape", [contract.USER_ID], ["batch"]),
        n("Concat", ["batch", "k"], ["pad_shape"], axis=0),
        n("Expand", ["neg_inf", "pad_shape"], ["pad_scores"]),
        n("Expand", ["minus1", "pad_shape"], ["pad_ids"]),
        n("Concat", ["scores", "pad_scores"], ["all_scores"], axis=1),
        n("Concat", ["cand", "pad_ids"], ["all_ids"], axis=1),
        n("TopK", ["all_scores", "k"], [contract.TOP_SCORES, "idx"], axis=1),
        n("IsInf", [contract.TOP_SCORES], ["empty"], detect_positive=0),
        n("GatherElements", ["all_ids", "idx"], ["ids"], axis=1),
        n("Where", ["empty", "minus1", "ids"], [contract.TOP_ITEM_IDS]),
        n("Where", ["empty", "minus1", "idx"], [contract.TOP_POSITIONS]),
    ]
    inputs = [
        helper.make_tensor_value_info(contract.USER_ID, TensorProto.INT64, ["B"]),
        helper.make_tensor_value_info(contract.ITEM_IDS, TensorProto.INT64, ["B", "N"]),
    ]
    outputs = [
        helper.make_tensor_value_info(contract.TOP_ITEM_IDS, TensorProto.INT64, ["B", k]),
        helper.make_tensor_value_info(contract.TOP_POSITIONS, TensorProto.INT64, ["B", k]),
        helper.make_tensor_value_info(contract.TOP_SCORES, TensorProto.FLOAT, ["B", k]),
    ]
    return _model(nodes, inputs, outputs, k)


def build_retrieve_onnx(k: int = K) -> onnx.ModelProto:
    """retrieve: full-catalog scores, excluded ids (-1 = padding) -> -inf, TopK."""
    n = helper.make_node
    nodes = _user_rows(n) + [
        n("MatMul", ["u", "Vt"], ["raw"]),
        n("Unsqueeze", [contract.EXCLUDE_ITEM_IDS, "axis2"], ["ex3"]),
        n("Equal", ["ex3", "item_range"], ["hits"]),
        n("Cast", ["hits"], ["hits_f"], to=TensorProto.FLOAT),
        n("ReduceSum", ["hits_f", "axis1"], ["hit_count"], keepdims=0),
        n("Greater", ["hit_count", "zero_f"], ["excluded"]),
        n("Not", ["uvalid2"], ["bad_user"]),
        n("Or", ["excluded", "bad_user"], ["masked"]),
        n("Where", ["masked", "neg_inf", "raw"], ["scores"]),
        n("TopK", ["scores", "k"], [contract.TOP_SCORES, "idx"], axis=1),
        n("IsInf", [contract.TOP_SCORES], ["empty"], detect_positive=0),
        n("Where", ["empty", "minus1", "idx"], [contract.TOP_ITEM_IDS]),
    ]
    inputs = [
        helper.make_tensor_value_info(contract.USER_ID, TensorProto.INT64, ["B"]),
        helper.make_tensor_value_info(contract.EXCLUDE_ITEM_IDS, TensorProto.INT64, ["B", "M"]),
    ]
    outputs = [
        helper.make_tensor_value_info(contract.TOP_ITEM_IDS, TensorProto.INT64, ["B", k]),
        helper.make_tensor_value_info(contract.TOP_SCORES, TensorProto.FLOAT, ["B", k]),
    ]
    return _model(nodes, inputs, outputs, k)


def _model(nodes: list, inputs: list, outputs: list, k: int) -> onnx.ModelProto:
    inits = [
        _const("U", USER_TABLE),
        _const("V", ITEM_TABLE),
        _const("Vt", ITEM_TABLE.T.copy()),
        _const("zero", np.array(0, np.int64)),
        _const("zero_f", np.array(0.0, np.float32)),
        _const("minus1", np.array(-1, np.int64)),
        _const("neg_inf", np.array(-np.inf, np.float32)),
        _const("num_users", np.array(NUM_USERS, np.int64)),
        _const("num_items", np.array(NUM_ITEMS, np.int64)),
        _const("item_range", np.arange(NUM_ITEMS, dtype=np.int64)),
        _const("k", np.array([k], np.int64)),
        _const("axis1", np.array([1], np.int64)),
        _const("axis2", np.array([2], np.int64)),
    ]
    # num_results [B, 1]: how many slots hold an item (the contract's count output).
    nodes = nodes + [
        helper.make_node("GreaterOrEqual", [contract.TOP_ITEM_IDS, "zero"], ["filled"]),
        helper.make_node("Cast", ["filled"], ["filled_i"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["filled_i", "axis1"], [contract.NUM_RESULTS], keepdims=1),
    ]
    outputs = outputs + [helper.make_tensor_value_info(contract.NUM_RESULTS, TensorProto.INT64,
                                                       ["B", 1])]
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, [t for t in inits if t.name in used])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# -- repository helpers --------------------------------------------------------------------
def add_model(
    repository: Path, name: str, kind: str, onnx_model: onnx.ModelProto | bytes, **config_args
) -> Path:
    """Writes <repository>/<name>/{config.pbtxt, 1/model.py, 1/model.onnx}."""
    args = dict(
        name=name,
        graph_kind=kind,
        backend=tc.BACKEND_PYTHON,
        k=K,
        max_candidates=MAX_CANDIDATES,
        max_exclude=MAX_EXCLUDE,
    )
    args.update(config_args)
    version = repository / name / "1"
    version.mkdir(parents=True)
    tc.write_model_config(repository / name / tc.CONFIG_FILE, tc.build_model_config(**args))
    shutil.copy(MODEL_PY, version / "model.py")
    data = onnx_model if isinstance(onnx_model, bytes) else onnx_model.SerializeToString()
    (version / contract.ONNX_FILE).write_bytes(data)
    return repository / name
