"""Writes a trained-artifacts folder atomically: everything or nothing.

Contents (names from `kmr.contract` where it has them):
``model.keras``, ``user_vocabulary.json``, ``item_vocabulary.json``, ``metrics.json``,
``training_curve.png`` and ``train_settings.json``. ``metrics.json`` holds the holdout
metrics under ``"model"`` and ``"popularity"``, plus ``"holdout_fit"`` / ``"final_fit"``
records (rows trained on, epochs, seconds, interactions/s) and ``"saved_model"``, which
names the fit whose model was saved. Files are written into a temporary
folder beside the target, then renamed onto it, so a failed run leaves no half-written
folder and an older artifacts folder is replaced only once the new one is complete.

Example:
    >>> check_output_dir("/tmp/does-not-exist-yet").name  # fine: will be created
    'does-not-exist-yet'
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from kmr import contract
from kmr.data.interactions import Interactions
from kmr.errors import UserError
from kmr.training.evaluation import metrics_to_json
from kmr.training.settings import settings_to_dict

if TYPE_CHECKING:
    from kmr.training.fit import TrainResult

CURVE_FILE = "training_curve.png"
SETTINGS_FILE = "train_settings.json"


def check_output_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Raises UserError if ``out_dir`` exists and is not a replaceable artifacts folder.

    A missing folder, an empty one, or one holding a previous ``model.keras`` is fine;
    a file, or a folder of something else, is refused (never delete user files).

    Example:
        >>> check_output_dir("/tmp/kmr-artifacts-new").name
        'kmr-artifacts-new'
    """
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a folder.")
        entries = list(out.iterdir())
        if entries and not (out / contract.MODEL_FILE).exists():
            raise UserError(
                f"--out {out}: folder is not empty and holds no {contract.MODEL_FILE}; "
                "refusing to replace it. Choose a new or empty folder."
            )
    if not out.parent.exists():
        raise UserError(f"--out {out}: parent folder {out.parent} does not exist.")
    return out


def write_artifacts(
    result: TrainResult, data: Interactions, out_dir: str | os.PathLike[str]
) -> Path:
    """Writes ``result`` into ``out_dir`` via a sibling temp folder and a rename.

    Args:
        result: A finished `kmr.training.fit.train_recommender` result.
        data: The interactions it was trained on (their vocabularies are saved).
        out_dir: The target folder (see `check_output_dir`).

    Returns:
        The written folder.

    Example:
        >>> from kmr.data.synthetic import make_synthetic
        >>> from kmr.training.fit import TrainSettings, train_recommender
        >>> import tempfile
        >>> data = make_synthetic(num_users=50, num_items=30, interactions_per_user=4)
        >>> result = train_recommender(data, TrainSettings(epochs=1, embedding_dim=4), verbose=0)
        >>> out = write_artifacts(result, data, tempfile.mkdtemp() + "/artifacts")
        >>> (out / "model.keras").exists()
        True
    """
    out = check_output_dir(out_dir).resolve()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the result is a normal folder
        result.model.save(tmp / contract.MODEL_FILE)
        data.user_vocab.save(tmp / contract.USER_VOCAB_FILE)
        data.item_vocab.save(tmp / contract.ITEM_VOCAB_FILE)
        metrics = {**metrics_to_json(result.metrics), **result.fit_records()}
        _write_json(tmp / contract.METRICS_FILE, metrics)
        _write_json(tmp / SETTINGS_FILE, _settings_record(result))
        plot_training_curve(result.fit.loss, tmp / CURVE_FILE, title=result.fit.objective)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def plot_training_curve(loss: list[float], path: str | os.PathLike[str], title: str = "") -> None:
    """Saves the per-epoch training loss as a PNG (matplotlib, Agg backend).

    Example:
        >>> import tempfile
        >>> plot_training_curve([2.0, 1.5, 1.2], tempfile.mkdtemp() + "/curve.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(range(1, len(loss) + 1), loss, marker="o")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title(f"training loss ({title})" if title else "training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _settings_record(result: TrainResult) -> dict[str, object]:
    import keras

    return {
        "settings": settings_to_dict(result.settings),
        "data": result.summary,
        "loss_per_epoch": result.fit.loss,
        "fits": result.fit_records(),
        "versions": {"keras": keras.__version__, "python": platform.python_version()},
    }


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _replace_dir(new: Path, out: Path) -> None:
    if not out.exists():
        os.replace(new, out)
        return
    # os.replace cannot swap a non-empty folder: move the old one aside first.
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
