"""Shared helpers for the export tests: tiny random-weight recommenders and sessions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kmr import contract
from kmr.models import build_recommender
from kmr.vocabulary import Vocabulary


def tiny_model(num_users: int = 30, num_items: int = 200, dim: int = 8, *,
               normalization: str = "sqrt_dim", seed: int = 0):
    """A recommender with random (not near-zero) weights so scores are well separated."""
    model = build_recommender(num_users, num_items, dim, k=10, normalization=normalization)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


def save_artifacts(model, folder: str | os.PathLike[str], users: list | None = None,
                   items: list | None = None) -> Path:
    """Saves model.keras and its vocabularies (raw ids ``users`` / ``items``, identity
    where None), as ``train`` does; returns the model path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    emb = model.get_layer("embedding")
    model.save(folder / contract.MODEL_FILE)
    Vocabulary(list(range(emb.num_users)) if users is None else users).save(
        folder / contract.USER_VOCAB_FILE)
    Vocabulary(list(range(emb.num_items)) if items is None else items).save(
        folder / contract.ITEM_VOCAB_FILE)
    return folder / contract.MODEL_FILE


def export_tiny_both(folder: Path, name: str, users: list, items: list, dim: int = 6):
    """Exports a `tiny_model` with raw ids ``users`` / ``items`` (both graphs, k=5, the
    default backend) into ``folder/repo``; returns (model, model path, kind -> version
    folder)."""
    from export.api import ExportOptions, export_model

    model = tiny_model(len(users), len(items), dim)
    path = save_artifacts(model, folder / "art", users, items)
    result = export_model(path, folder / "repo", ExportOptions(name=name, graph="both", k=5))
    return model, path, {m.graph_kind: m.version_dir for m in result.models}


def run_session(session, kind: str, feed: dict, id_maps=None) -> dict:
    """A served graph on a dense feed, answers as dense (empty slots: -1 / -inf).

    ``id_maps`` = ``(users, items)`` vocabularies for a raw-id graph (see
    `export.parity.served_runner`, which also checks ``num_results``).
    """
    from export.parity import served_runner

    return served_runner(session, kind, id_maps)(feed)
