"""Tiny exported raw-id models and raw tritonclient calls for the e2e tests of issue 15."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from export.api import ExportOptions, export_model
from kmr import contract
from kmr.vocabulary import Vocabulary
from tests.support.export_helpers import save_artifacts, tiny_model

K = 4


def name_of(model: RawModel, graph: str) -> str:
    return f"{model.prefix}_{graph}"


@dataclass
class RawModel:
    """An exported raw-id model: names, vocabularies and the tables for references."""

    prefix: str
    kind: str
    users: Vocabulary
    items: Vocabulary
    user_table: np.ndarray
    item_table: np.ndarray

    def expected(self, user: object, items: list | None) -> list:
        """Raw ids of the top-K by the model's own scores (None: whole catalogue)."""
        if user not in self.users:
            return []
        u = self.user_table[self.users.ids.index(user)]
        pool = list(range(len(self.items))) if items is None else [
            self.items.ids.index(i) for i in items if i in self.items]
        scores = self.item_table[pool] @ u / np.sqrt(u.shape[0])
        order = np.argsort(-scores, kind="stable")[:K]
        return [self.items.ids[pool[j]] for j in order]


def export_raw_model(tmp: Path, prefix: str, users: list, items: list, seed: int,
                     repo: Path | None = None) -> RawModel:
    """Exports a tiny model with these raw ids (both graphs, python backend)."""
    model = tiny_model(len(users), len(items), 4, seed=seed)
    path = save_artifacts(model, tmp / prefix, users, items)
    export_model(path, repo or tmp / "repo", ExportOptions(name=prefix, graph="both", k=K,
                                                           backend="python"))
    user_table, item_table = (w.numpy() for w in model.get_layer("embedding").weights)
    kind = "str" if Vocabulary(items).kind == "str" else "int"
    return RawModel(prefix, kind, Vocabulary(users), Vocabulary(items), user_table, item_table)


def wire(kind: str, values: list) -> np.ndarray:
    if kind == "str":
        return np.array([str(v).encode("utf-8") for v in values], dtype=object)
    return np.array(values, dtype=np.int64)


def raw_infer(server, model: RawModel, kind: str, graph: str, user, ids: list | None) -> dict:
    tensors = []
    feed = {contract.USER_ID: wire(kind, [user]).reshape(1, 1)}
    if ids is not None:
        name = contract.ITEM_IDS if graph == contract.GRAPH_RERANK else contract.EXCLUDE_ITEM_IDS
        feed[name] = wire(kind, ids).reshape(1, -1)
    for name, array in feed.items():
        tensor = grpcclient.InferInput(name, list(array.shape),
                                       "BYTES" if kind == "str" else "INT64")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = client.infer(name_of(model, graph), tensors)
    out = {name: result.as_numpy(name) for name in contract.OUTPUTS[graph]}
    out["version"] = result.get_response().model_version
    return out


def answered_ids(kind: str, answer: dict) -> list:
    """The row's raw item ids (checks the empty slots hold the reserved id and score)."""
    count = int(answer[contract.NUM_RESULTS][0, 0])
    row = answer[contract.TOP_ITEM_IDS][0]
    values = [v.decode("utf-8") if kind == "str" else int(v) for v in row]
    pad = contract.PAD_STR if kind == "str" else contract.PAD_INT
    assert values[count:] == [pad] * (K - count)  # empty slots hold the reserved id
    assert all(s == np.float32(contract.EMPTY_SCORE)
               for s in answer[contract.TOP_SCORES][0, count:])
    return values[:count]


