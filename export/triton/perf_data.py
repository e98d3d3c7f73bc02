"""The perf_analyzer input data written next to each served version.

perf_analyzer's default random data makes ids the model does not know (an unknown user
gets an empty answer; a benchmark of that measures nothing real). Each version folder
gets ``perf_analyzer_data.json`` with requests of valid ids in the version's own id
kind, for ``perf_analyzer -m MODEL --input-data <version>/perf_analyzer_data.json``.

Example:
    >>> from kmr.vocabulary import Vocabulary
    >>> data = perf_analyzer_data("rerank", Vocabulary(["a", "b"]), Vocabulary([5, 6, 7]),
    ...                           requests=1, candidates=2)
    >>> data["data"][0]["user_id"]["shape"], len(data["data"][0]["item_ids"]["content"])
    ([1], 2)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kmr import contract
from kmr.vocabulary import Vocabulary

PERF_ANALYZER_FILE = "perf_analyzer_data.json"


def perf_analyzer_data(kind: str, users: Vocabulary, items: Vocabulary, *, raw: bool = True,
                       requests: int = 16, candidates: int = 100, seed: int = 0,
                       index: str = contract.INDEX_EXACT) -> dict[str, Any]:
    """perf_analyzer's ``--input-data`` JSON: ``requests`` batch-1 requests of valid ids.

    An IVF / int8 model also gets ``nprobe`` / ``rescore`` 0 (the exported default): it
    is a required input on the onnxruntime backend.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(requests):
        user = int(rng.integers(0, len(users)))
        width = min(candidates, len(items))
        picked = rng.choice(len(items), size=width if kind == contract.GRAPH_RERANK else 1,
                            replace=False)
        as_ids = (lambda v, i: v.ids[int(i)]) if raw else (lambda v, i: int(i))
        rows.append({
            contract.USER_ID: {"content": [as_ids(users, user)], "shape": [1]},
            contract.INPUTS[kind][1]: {"content": [as_ids(items, i) for i in picked],
                                       "shape": [len(picked)]},
        })
        setting = contract.INDEX_SETTINGS.get(index)
        if setting:
            rows[-1][setting] = {"content": [0], "shape": [1]}
    return {"data": rows}


def write_perf_analyzer_data(path: Path, kind: str, users: Vocabulary, items: Vocabulary,
                             *, raw: bool, index: str = contract.INDEX_EXACT) -> Path:
    """Writes `perf_analyzer_data` for ``kind`` to ``path``."""
    data = perf_analyzer_data(kind, users, items, raw=raw, index=index)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
