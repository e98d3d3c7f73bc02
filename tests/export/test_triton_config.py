"""Tests for export/triton/config.py: built configs parse back as Triton would read them."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.triton import config as tc
from kmr import contract

SIZES = dict(k=5)
CASES = [(kind, backend) for kind in contract.GRAPH_KINDS for backend in tc.BACKENDS]


def _build(kind: str, backend: str, **overrides) -> mc.ModelConfig:
    args = dict(name="mf", graph_kind=kind, backend=backend, **SIZES)
    args.update(overrides)
    return tc.build_model_config(**args)


@pytest.mark.parametrize(("kind", "backend"), CASES)
def test_build_model_config_round_trips_when_text_is_parsed(kind: str, backend: str) -> None:
    config = _build(kind, backend)
    text = tc.config_to_text(config)
    parsed = text_format.Parse(text, mc.ModelConfig())
    assert parsed == config
    assert tc.config_from_text(text) == config


@pytest.mark.parametrize(("kind", "backend"), CASES)
def test_build_model_config_has_contract_tensors_when_built(kind: str, backend: str) -> None:
    config = tc.config_from_text(tc.config_to_text(_build(kind, backend)))
    assert [t.name for t in config.input] == list(contract.INPUTS[kind])
    assert [t.name for t in config.output] == list(contract.OUTPUTS[kind])
    assert all(t.data_type == mc.TYPE_INT64 for t in config.input)

    user, id_list = config.input
    assert list(user.dims) == [1]
    # The onnxruntime graph takes [B]; the python backend must not see a rank-0 reshape
    # (Triton 2.51's python backend crashes on a batch-0 request reshaped to rank 0).
    python = backend == tc.BACKEND_PYTHON
    assert user.HasField("reshape") == (not python)
    if not python:
        assert list(user.reshape.shape) == []
    assert list(id_list.dims) == [-1]
    assert not id_list.HasField("reshape")
    # The ONNX graph requires the exclude list; only model.py can stand in for a missing one.
    assert id_list.optional == (kind == contract.GRAPH_RETRIEVE and backend == tc.BACKEND_PYTHON)
    assert id_list.allow_ragged_batch == (backend == tc.BACKEND_PYTHON)
    assert not user.optional and not user.allow_ragged_batch

    for out in config.output:
        count = out.name == contract.NUM_RESULTS
        assert list(out.dims) == ([1] if count else [SIZES["k"]])
        expected = mc.TYPE_FP32 if out.name == contract.TOP_SCORES else mc.TYPE_INT64
        assert out.data_type == expected


@pytest.mark.parametrize(("kind", "backend"), CASES)
def test_build_model_config_declares_bytes_ids_when_id_kind_is_str(kind: str, backend: str):
    config = _build(kind, backend, id_kind=contract.IDS_STR)
    assert all(t.data_type == mc.TYPE_STRING for t in config.input)
    types = {o.name: o.data_type for o in config.output}
    assert types[contract.TOP_ITEM_IDS] == mc.TYPE_STRING
    assert types[contract.NUM_RESULTS] == mc.TYPE_INT64
    assert tc.model_parameters(config)[contract.PARAM_ID_KIND] == contract.IDS_STR


@pytest.mark.parametrize("kind", contract.GRAPH_KINDS)
def test_build_model_config_sets_platform_when_backend_is_onnxruntime(kind: str) -> None:
    config = _build(kind, tc.BACKEND_ONNXRUNTIME)
    assert config.platform == "onnxruntime_onnx"
    assert config.backend == "onnxruntime"
    assert config.default_model_filename == contract.ONNX_FILE
    assert tc.PARAM_INTRA_OP_THREADS not in config.parameters


@pytest.mark.parametrize("kind", contract.GRAPH_KINDS)
def test_build_model_config_uses_python_backend_when_backend_is_python(kind: str) -> None:
    config = _build(kind, tc.BACKEND_PYTHON, intra_op_threads=2)
    assert config.backend == "python"
    assert config.platform == ""
    assert config.default_model_filename == ""
    assert tc.model_parameters(config)[tc.PARAM_INTRA_OP_THREADS] == 2


@pytest.mark.parametrize(("kind", "backend"), CASES)
def test_build_model_config_records_parameters_when_built(kind: str, backend: str) -> None:
    config = _build(kind, backend, max_candidates=300, max_exclude=40)
    params = tc.model_parameters(tc.config_from_text(tc.config_to_text(config)))
    assert params[contract.PARAM_GRAPH_KIND] == kind
    # Table sizes are facts of a version (its manifest), never of the model's config.
    assert contract.PARAM_NUM_USERS not in params and contract.PARAM_NUM_ITEMS not in params
    assert params[contract.PARAM_ID_KIND] == contract.IDS_INDEX
    assert params[contract.PARAM_K] == 5
    assert params[contract.PARAM_MAX_CANDIDATES] == 300
    assert params[contract.PARAM_MAX_EXCLUDE] == 40
    assert params[contract.PARAM_USER_VOCAB] == contract.USER_VOCAB_FILE
    assert params[contract.PARAM_ITEM_VOCAB] == contract.ITEM_VOCAB_FILE
    # Triton stores parameters as strings.
    assert all(p.string_value for p in config.parameters.values())


@pytest.mark.parametrize(("kind", "backend"), CASES)
def test_build_model_config_batches_and_warms_up_when_built(kind: str, backend: str) -> None:
    config = _build(
        kind,
        backend,
        max_batch_size=32,
        max_queue_delay_us=250,
        instance_count=2,
        preferred_batch_sizes=[8, 16],
    )
    assert config.max_batch_size == 32
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    (group,) = config.instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 2

    (warmup,) = config.model_warmup
    assert warmup.batch_size == 1 and warmup.count == 1
    assert set(warmup.inputs) == set(contract.INPUTS[kind])
    for name, value in warmup.inputs.items():
        # Zero data is id 0, which always exists; every dims is concrete.
        assert value.zero_data and value.data_type == mc.TYPE_INT64
        assert list(value.dims) and all(d > 0 for d in value.dims), name


def test_build_model_config_preferred_sizes_absent_when_not_given() -> None:
    config = _build(contract.GRAPH_RERANK, tc.BACKEND_ONNXRUNTIME)
    assert list(config.dynamic_batching.preferred_batch_size) == []
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.max_batch_size == 64


def test_build_model_config_warmup_fits_when_max_candidates_is_small() -> None:
    config = _build(contract.GRAPH_RERANK, tc.BACKEND_PYTHON, max_candidates=3)
    assert list(config.model_warmup[0].inputs[contract.ITEM_IDS].dims) == [3]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(graph_kind="ranking"), "graph_kind"),
        (dict(backend="tensorrt"), "backend"),
        (dict(k=0), "Received: k=0"),
        (dict(id_kind="uuid"), "id_kind"),
        (dict(instance_count=1.5), "instance_count"),
        (dict(max_queue_delay_us=-5), "max_queue_delay_us"),
        (dict(max_batch_size=8, preferred_batch_sizes=[4, 16]), r"\[4, 16\]"),
    ],
)
def test_build_model_config_raises_when_argument_is_invalid(overrides: dict, match: str) -> None:
    args = dict(graph_kind=contract.GRAPH_RERANK, backend=tc.BACKEND_PYTHON)
    args.update(overrides)
    with pytest.raises(ValueError, match=match):
        _build(args.pop("graph_kind"), args.pop("backend"), **args)


def test_write_model_config_round_trips_when_read_back(tmp_path) -> None:
    config = _build(contract.GRAPH_RETRIEVE, tc.BACKEND_PYTHON)
    written = tc.write_model_config(tmp_path / "mf" / "config.pbtxt", config)
    assert written == tmp_path / "mf" / "config.pbtxt"
    assert tc.read_model_config(written) == config
    assert tc.read_model_config(tmp_path / "mf") == config
    # A folder argument gets config.pbtxt appended.
    assert tc.write_model_config(tmp_path / "mf", config) == written


def test_model_parameters_raises_when_integer_parameter_is_not_a_number() -> None:
    config = _build(contract.GRAPH_RERANK, tc.BACKEND_ONNXRUNTIME)
    config.parameters[contract.PARAM_K].string_value = "five"
    with pytest.raises(ValueError, match="`k` must be an integer. Received: 'five'"):
        tc.model_parameters(config)


def test_onnxruntime_instances_share_one_session_when_count_is_above_one() -> None:
    many = _build(contract.GRAPH_RETRIEVE, tc.BACKEND_ONNXRUNTIME, instance_count=3)
    assert tc.model_parameters(many)[tc.PARAM_SHARE_SESSION] == "true"
    one = _build(contract.GRAPH_RETRIEVE, tc.BACKEND_ONNXRUNTIME)
    assert tc.PARAM_SHARE_SESSION not in tc.model_parameters(one)
    python = _build(contract.GRAPH_RETRIEVE, tc.BACKEND_PYTHON, instance_count=3)
    assert tc.PARAM_SHARE_SESSION not in tc.model_parameters(python)
