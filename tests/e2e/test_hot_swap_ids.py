"""Hot swap to a version whose id mapping changed, under load, raw ids on the wire.

Version 1 and version 2 have different item (and user) vocabularies: items were added and
removed, so most dense indices shift. The server polls the repository; callers (raw
tritonclient, and the project client given only a URL and a model name) keep sending raw
ids while v2 is published. Every answer is checked against the reference of
the version that answered it (the response's ``model_version``): zero wrong raw ids, zero
failed requests. Before ids travelled inside the served graph, a long-lived client decoded
v2's indices with v1's vocabulary and returned wrong items without any error.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from export.triton.local_server import LocalTritonServer
from kmr import contract
from tests.support.raw_models import answered_ids, export_raw_model, raw_infer

pytestmark = pytest.mark.triton

V1_ITEMS = [f"sku-{i:03d}" for i in range(40)]
# Remove 12 items, add 15 that sort first: nearly every item's index moves.
V2_ITEMS = [f"new-{i:03d}" for i in range(15)] + V1_ITEMS[12:]
V1_USERS = [f"u{i}" for i in range(10)]
V2_USERS = [f"u{i}" for i in range(3, 14)]
# Sparse int ids: the retrieve graphs use the compact lookup, whose row order (a perfect
# hash of each version's own ids) differs between the versions.
V1_INT_ITEMS = [10**12 + 7 * i for i in range(40)]
V2_INT_ITEMS = [-(10**9) - 3 * i for i in range(15)] + V1_INT_ITEMS[12:]
VOCABULARIES = {
    "str": ((V1_USERS, V1_ITEMS), (V2_USERS, V2_ITEMS)),
    "int": (([100 + 9 * i for i in range(10)], V1_INT_ITEMS),
            ([100 + 9 * i for i in range(3, 14)], V2_INT_ITEMS)),
}


def _known(kind: str) -> tuple[list, list]:
    """Every user and item of either version (sorted)."""
    (u1, i1), (u2, i2) = VOCABULARIES[kind]
    return sorted(set(u1) | set(u2)), sorted(set(i1) | set(i2))


def _worker(server, versions, stop, counts, errors, seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    users, items = _known(kind)
    probe = versions["1"]
    while not stop.is_set():
        user = users[int(rng.integers(len(users)))]
        graph = contract.GRAPH_RERANK if rng.random() < 0.5 else contract.GRAPH_RETRIEVE
        ids = [items[int(i)] for i in rng.choice(len(items), 6, replace=False)]
        try:
            answer = raw_infer(server, probe, kind, graph, user,
                               ids if graph == contract.GRAPH_RERANK else ids[:2])
        except InferenceServerException as error:
            errors.append(f"{graph}: {error}")
            continue
        model = versions[answer["version"]]
        # The reference of the version that answered: its own ids, tables and vocabulary.
        if graph == contract.GRAPH_RERANK:
            want = model.expected(user, ids)
        else:  # exclusions unknown to this version are ignored
            want = model.expected(user, [i for i in model.items.ids if i not in ids[:2]])
        got = answered_ids(kind, answer)
        key = "ok" if got == want else "wrong"
        counts[(answer["version"], key)] = counts.get((answer["version"], key), 0) + 1
        if key == "wrong":
            errors.append(f"v{answer['version']} {graph} {user}: got {got}, want {want}")


def _client_worker(server, versions, stop, counts, errors, seed: int, kind: str) -> None:
    """The project client, long-lived, given only a URL and a model name (no files)."""
    from client import RecommenderClient

    rng = np.random.default_rng(100 + seed)
    users, items = _known(kind)
    with RecommenderClient(server.grpc_url, "swap_rerank", retries=3) as client:
        while not stop.is_set():
            user = users[int(rng.integers(len(users)))]
            ids = [items[int(i)] for i in rng.choice(len(items), 6, replace=False)]
            try:
                answer = client.rerank([user], [ids])
            except Exception as error:  # noqa: BLE001 - every failure is counted
                errors.append(f"client: {error!r}")
                continue
            version = answer.model_version
            got = [i for i in answer.item_ids[0].tolist() if i is not None]
            want = versions[version].expected(user, ids)
            key = "client ok" if got == want else "client wrong"
            counts[(version, key)] = counts.get((version, key), 0) + 1
            if got != want:
                errors.append(f"client v{version} {user}: got {got}, want {want}")


@pytest.mark.parametrize("kind", ["str", "int"])
def test_hot_swap_never_answers_with_another_versions_ids_when_vocabulary_changes(
        triton_home, tmp_path, kind) -> None:
    repo = tmp_path / "repo"
    (v1_users, v1_items), (v2_users, v2_items) = VOCABULARIES[kind]
    versions = {"1": export_raw_model(tmp_path, "swap", v1_users, v1_items, 1, repo=repo)}
    with LocalTritonServer(repo, installation=triton_home, model_control_mode="poll",
                           repository_poll_secs=1) as server:
        stop, counts, errors = threading.Event(), {}, []
        workers = [threading.Thread(target=target, args=(server, versions, stop, counts,
                                                         errors, seed, kind), daemon=True)
                   for seed, target in enumerate([_worker, _worker, _worker, _client_worker,
                                                  _client_worker])]
        for worker in workers:
            worker.start()
        time.sleep(2)
        versions["2"] = export_raw_model(tmp_path / "v2", "swap", v2_users, v2_items, 2,
                                         repo=repo)
        if kind == "int":  # each version serves its own perfect hash and row order
            for version in ("1", "2"):
                manifest = json.loads((repo / "swap_retrieve" / version /
                                       "export_manifest.json").read_text())
                assert manifest["id_lookup"] == {"users": "compact", "items": "compact"}
        deadline = time.monotonic() + 60
        while counts.get(("2", "ok"), 0) + counts.get(("2", "wrong"), 0) < 200:
            assert time.monotonic() < deadline, (counts, errors[:5])
            time.sleep(0.2)
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    print(f"\n[measure] hot swap with a changed {kind} vocabulary: {counts}, "
          f"errors {len(errors)}")
    assert errors == [], errors[:10]
    assert counts.get(("1", "ok"), 0) > 0 and counts.get(("2", "ok"), 0) >= 200
    assert counts.get(("1", "client ok"), 0) > 0 and counts.get(("2", "client ok"), 0) > 0
