"""Model facts discovered from the server's model config.

Triton returns the config as JSON in two slightly different shapes: the HTTP endpoint
gives the ModelConfig itself with int64 values as numbers; tritonclient's gRPC
``as_json=True`` wraps it in ``{"config": ...}``, writes int64 values as strings and
omits fields holding their default. `normalize_config` turns either into one dict so
that `parse_model_info` is the only parser.

Example:
    >>> config = {"config": {"name": "mf", "max_batch_size": 8,
    ...     "input": [{"name": "user_id", "data_type": "TYPE_INT64", "dims": ["1"]},
    ...               {"name": "item_ids", "data_type": "TYPE_INT64", "dims": ["-1"]}],
    ...     "output": [{"name": n, "data_type": t, "dims": [d]} for n, t, d in
    ...                [("top_item_ids", "TYPE_INT64", "10"), ("top_positions", "TYPE_INT64",
    ...                  "10"), ("top_scores", "TYPE_FP32", "10"),
    ...                 ("num_results", "TYPE_INT64", "1")]],
    ...     "parameters": {"graph_kind": {"string_value": "rerank"},
    ...                    "id_kind": {"string_value": "int"}, "k": {"string_value": "10"}}}}
    >>> info = parse_model_info(config)
    >>> info.graph_kind, info.id_kind, info.k, info.max_batch_size, info.num_items
    ('rerank', 'int', 10, 8, None)
    >>> info.raw_ids, info.inputs["user_id"].dims
    (True, (1,))

A config without ``id_kind`` (an older export) is a dense-index model; its ``num_users``
and ``num_items``, when present, are still read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from client.errors import ModelContractError
from kmr import contract


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the served model (dims exclude the batch dimension)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """What the client needs to know about a served model.

    Attributes:
        name: Model name on the server.
        graph_kind: ``"rerank"`` or ``"retrieve"`` (`kmr.contract.GRAPH_KINDS`).
        k: The exported k: outputs have k columns; a request may ask for fewer.
        max_batch_size: Triton's max_batch_size; 0 means the model does not batch.
        max_candidates: Most candidates a rerank request may carry per user.
        max_exclude: Longest exclusion list a retrieve request may carry per user.
        id_kind: ``"int"`` / ``"str"``: the graph takes and returns raw ids (INT64 /
            BYTES on the wire); ``"index"``: dense indices (`kmr.contract.ID_KINDS`).
            ``"index"`` when the config does not say (older exports).
        num_users: Size of the user table, only if the config records it (older
            exports); None otherwise: sizes are facts of a version, not of the model.
        num_items: Size of the item table, likewise (None when not recorded).
        embedding_dim: Embedding width, if the config records it.
        inputs: Input specs by name.
        outputs: Output specs by name.
        user_vocabulary_file: File name of the user vocabulary in the version folder.
        item_vocabulary_file: File name of the item vocabulary in the version folder.
        index: ``"exact"``, ``"ivf"`` or ``"int8"`` (`kmr.contract.INDEXES`): an IVF
            retrieve model takes ``nprobe``, an int8 one ``rescore``. ``"exact"`` when the
            config does not say.
    """

    name: str
    graph_kind: str
    k: int
    max_batch_size: int
    max_candidates: int
    max_exclude: int
    id_kind: str = contract.IDS_INDEX
    num_users: int | None = None
    num_items: int | None = None
    embedding_dim: int | None = None
    inputs: Mapping[str, TensorSpec] = field(default_factory=dict)
    outputs: Mapping[str, TensorSpec] = field(default_factory=dict)
    user_vocabulary_file: str = contract.USER_VOCAB_FILE
    item_vocabulary_file: str = contract.ITEM_VOCAB_FILE
    index: str = contract.INDEX_EXACT

    @property
    def raw_ids(self) -> bool:
        """True when the served graph speaks raw ids (id_kind ``"int"`` or ``"str"``)."""
        return self.id_kind != contract.IDS_INDEX

    @property
    def has_num_results(self) -> bool:
        """True when the graph returns ``num_results`` (every current export does)."""
        return contract.NUM_RESULTS in self.outputs

    @property
    def outputs_to_request(self) -> tuple[str, ...]:
        """The contract outputs this model has, in contract order."""
        return tuple(n for n in contract.OUTPUTS[self.graph_kind] if n in self.outputs)


def normalize_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the ModelConfig dict from an HTTP or gRPC ``as_json`` answer.

    Both protocols give the same dict: the HTTP shape, int64 values as ints, enum
    values by name, fields at their default value omitted.

    Example:
        >>> normalize_config({"config": {"name": "m", "input": [{"dims": ["1"]}]}})
        {'name': 'm', 'input': [{'dims': [1]}]}
    """
    return _plain(config_message(raw))


def config_message(raw: Mapping[str, Any]) -> model_config_pb2.ModelConfig:
    """Parses an HTTP or gRPC ``as_json`` config answer into a ModelConfig message."""
    body = raw.get("config", raw) if isinstance(raw, Mapping) else raw
    if not isinstance(body, Mapping):
        raise ModelContractError(f"Expected a model config mapping. Received: {raw!r}")
    try:
        return json_format.ParseDict(body, model_config_pb2.ModelConfig(),
                                     ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise ModelContractError(f"The server's model config cannot be parsed: {error}") from error


def parse_model_info(raw: Mapping[str, Any]) -> ModelInfo:
    """Extracts `ModelInfo` from a config answer of either protocol.

    Raises:
        ModelContractError: a required parameter or tensor is missing or malformed, or
            a tensor's data type does not match the model's ``id_kind``.
    """
    message = config_message(raw)
    params = {key: value.string_value for key, value in message.parameters.items()}
    name = message.name or "<unnamed>"
    kind = _choice(params, name, contract.PARAM_GRAPH_KIND, contract.GRAPH_KINDS, None)
    id_kind = _choice(params, name, contract.PARAM_ID_KIND, contract.ID_KINDS,
                      contract.IDS_INDEX)
    index = _choice(params, name, contract.PARAM_INDEX, contract.INDEXES, contract.INDEX_EXACT)
    inputs = {t.name: _spec(t) for t in message.input}
    outputs = {t.name: _spec(t) for t in message.output}
    _check_tensors(name, (kind, index), id_kind, inputs, outputs)

    def number(key: str, default: int | None = None) -> int | None:
        return _int_param(params, name, key, default)

    return ModelInfo(
        name=name,
        graph_kind=kind,
        k=number(contract.PARAM_K),
        max_batch_size=int(message.max_batch_size),
        max_candidates=number(contract.PARAM_MAX_CANDIDATES, contract.DEFAULT_MAX_CANDIDATES),
        max_exclude=number(contract.PARAM_MAX_EXCLUDE, contract.DEFAULT_MAX_EXCLUDE),
        id_kind=id_kind,
        num_users=number(contract.PARAM_NUM_USERS),
        num_items=number(contract.PARAM_NUM_ITEMS),
        embedding_dim=number(contract.PARAM_EMBEDDING_DIM),
        inputs=inputs,
        outputs=outputs,
        user_vocabulary_file=params.get(contract.PARAM_USER_VOCAB) or contract.USER_VOCAB_FILE,
        item_vocabulary_file=params.get(contract.PARAM_ITEM_VOCAB) or contract.ITEM_VOCAB_FILE,
        index=index,
    )


_REQUIRED = (contract.PARAM_K,)
_ID_TYPES = {contract.IDS_INT: "TYPE_INT64", contract.IDS_STR: "TYPE_STRING",
             contract.IDS_INDEX: "TYPE_INT64"}
_ID_TENSORS = (contract.USER_ID, contract.ITEM_IDS, contract.EXCLUDE_ITEM_IDS,
               contract.TOP_ITEM_IDS)
_FIXED_TYPES = {contract.TOP_POSITIONS: "TYPE_INT64", contract.TOP_SCORES: "TYPE_FP32",
                contract.NUM_RESULTS: "TYPE_INT64", contract.NPROBE: "TYPE_INT64",
                contract.RESCORE: "TYPE_INT64"}


def _int_param(params: Mapping[str, str], name: str, key: str,
               default: int | None) -> int | None:
    text = params.get(key, "")
    if text == "":
        if default is None and key in _REQUIRED:
            raise ModelContractError(
                f"Model {name!r}: config parameter {key!r} is missing; the model was "
                "not exported by kmr or its config.pbtxt was edited."
            )
        return default
    try:
        return int(text)
    except ValueError as error:
        raise ModelContractError(
            f"Model {name!r}: config parameter {key!r} must be an integer. "
            f"Received: {text!r}"
        ) from error


def _choice(params: Mapping[str, str], name: str, key: str, allowed: tuple[str, ...],
            default: str | None) -> str:
    value = params.get(key, "")
    if value == "" and default is not None:
        return default
    if value not in allowed:
        raise ModelContractError(
            f"Model {name!r}: config parameter {key!r} must be one of {allowed}. "
            f"Received: {value!r}"
        )
    return value


def _check_tensors(name: str, kind_index: tuple[str, str], id_kind: str,
                   inputs: Mapping[str, TensorSpec], outputs: Mapping[str, TensorSpec]) -> None:
    """Every contract tensor is there, with the data type its id kind implies.

    ``num_results`` may be missing only from dense-index models (older exports).
    """
    kind, index = kind_index
    if index != contract.INDEX_EXACT and kind != contract.GRAPH_RETRIEVE:
        raise ModelContractError(f"Model {name!r} ({kind}): config parameter "
                                 f"{contract.PARAM_INDEX!r} {index!r} needs a retrieve model.")
    for role, wanted, have in (
        ("input", contract.inputs_of(kind, index), inputs),
        ("output", contract.OUTPUTS[kind], outputs),
    ):
        missing = [n for n in wanted if n not in have]
        if missing == [contract.NUM_RESULTS] and id_kind == contract.IDS_INDEX:
            missing = []
        if missing:
            raise ModelContractError(
                f"Model {name!r} ({kind}): {role}(s) {missing} missing from the config. "
                f"Received: {sorted(have)}"
            )
    for spec in (*inputs.values(), *outputs.values()):
        expected = _ID_TYPES[id_kind] if spec.name in _ID_TENSORS else _FIXED_TYPES.get(
            spec.name)
        if expected is not None and spec.data_type != expected:
            raise ModelContractError(
                f"Model {name!r} (id_kind {id_kind!r}): tensor {spec.name!r} must be "
                f"{expected}. Received: {spec.data_type}"
            )


def _spec(tensor: Any) -> TensorSpec:
    return TensorSpec(
        name=tensor.name,
        data_type=model_config_pb2.DataType.Name(tensor.data_type),
        dims=tuple(int(d) for d in tensor.dims),
    )


def _plain(message: Any) -> dict[str, Any]:
    # json_format writes int64 as strings (proto3 JSON); the HTTP endpoint does not.
    out: dict[str, Any] = {}
    for fd, value in message.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {k: _value(value_fd, v) for k, v in value.items()}
        elif _is_repeated(fd):
            out[fd.name] = [_value(fd, v) for v in value]
        else:
            out[fd.name] = _value(fd, value)
    return out


def _is_repeated(fd: Any) -> bool:
    # protobuf 6.3x deprecates ``label`` (a DeprecationWarning) for ``is_repeated``.
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == fd.LABEL_REPEATED


def _value(fd: Any, value: Any) -> Any:
    if fd.message_type is not None:
        return _plain(value)
    if fd.enum_type is not None:
        return fd.enum_type.values_by_number[value].name
    return value
