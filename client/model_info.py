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
    ...     "output": [{"name": n, "data_type": t, "dims": ["10"]} for n, t in
    ...                [("top_item_ids", "TYPE_INT64"), ("top_positions", "TYPE_INT64"),
    ...                 ("top_scores", "TYPE_FP32")]],
    ...     "parameters": {"graph_kind": {"string_value": "rerank"},
    ...                    "k": {"string_value": "10"}, "num_users": {"string_value": "3"},
    ...                    "num_items": {"string_value": "5"}}}}
    >>> info = parse_model_info(config)
    >>> info.graph_kind, info.k, info.max_batch_size, info.inputs["user_id"].dims
    ('rerank', 10, 8, (1,))
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
        num_users: Size of the user table; dense user indices are in [0, num_users).
        num_items: Size of the item table; dense item indices are in [0, num_items).
        max_batch_size: Triton's max_batch_size; 0 means the model does not batch.
        max_candidates: Most candidates a rerank request may carry per user.
        max_exclude: Longest exclusion list a retrieve request may carry per user.
        embedding_dim: Embedding width, if the config records it.
        inputs: Input specs by name.
        outputs: Output specs by name.
        user_vocabulary_file: File name of the user vocabulary in the version folder.
        item_vocabulary_file: File name of the item vocabulary in the version folder.
    """

    name: str
    graph_kind: str
    k: int
    num_users: int
    num_items: int
    max_batch_size: int
    max_candidates: int
    max_exclude: int
    embedding_dim: int | None = None
    inputs: Mapping[str, TensorSpec] = field(default_factory=dict)
    outputs: Mapping[str, TensorSpec] = field(default_factory=dict)
    user_vocabulary_file: str = contract.USER_VOCAB_FILE
    item_vocabulary_file: str = contract.ITEM_VOCAB_FILE


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
        ModelContractError: a required parameter or tensor is missing or malformed.
    """
    message = config_message(raw)
    params = {key: value.string_value for key, value in message.parameters.items()}
    name = message.name or "<unnamed>"

    def int_param(key: str, default: int | None = None) -> int | None:
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

    kind = params.get(contract.PARAM_GRAPH_KIND, "")
    if kind not in contract.GRAPH_KINDS:
        raise ModelContractError(
            f"Model {name!r}: config parameter {contract.PARAM_GRAPH_KIND!r} must be one of "
            f"{contract.GRAPH_KINDS}. Received: {kind!r}"
        )
    inputs = {t.name: _spec(t) for t in message.input}
    outputs = {t.name: _spec(t) for t in message.output}
    for role, wanted, have in (
        ("input", contract.INPUTS[kind], inputs),
        ("output", contract.OUTPUTS[kind], outputs),
    ):
        missing = [n for n in wanted if n not in have]
        if missing:
            raise ModelContractError(
                f"Model {name!r} ({kind}): {role}(s) {missing} missing from the config. "
                f"Received: {sorted(have)}"
            )
    return ModelInfo(
        name=name,
        graph_kind=kind,
        k=int_param(contract.PARAM_K),
        num_users=int_param(contract.PARAM_NUM_USERS),
        num_items=int_param(contract.PARAM_NUM_ITEMS),
        max_batch_size=int(message.max_batch_size),
        max_candidates=int_param(contract.PARAM_MAX_CANDIDATES, contract.DEFAULT_MAX_CANDIDATES),
        max_exclude=int_param(contract.PARAM_MAX_EXCLUDE, contract.DEFAULT_MAX_EXCLUDE),
        embedding_dim=int_param(contract.PARAM_EMBEDDING_DIM),
        inputs=inputs,
        outputs=outputs,
        user_vocabulary_file=params.get(contract.PARAM_USER_VOCAB) or contract.USER_VOCAB_FILE,
        item_vocabulary_file=params.get(contract.PARAM_ITEM_VOCAB) or contract.ITEM_VOCAB_FILE,
    )


_REQUIRED = (contract.PARAM_K, contract.PARAM_NUM_USERS, contract.PARAM_NUM_ITEMS)


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
