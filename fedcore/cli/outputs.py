"""What ``fedcore train`` reads from metrics and writes into ``--out``: metrics.csv, metrics.png, TensorBoard scalars."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

CSV_COLUMNS = (
    "round", "train_loss", "train_accuracy", "heldout_loss", "heldout_accuracy", "seconds",
    "clients_dropped", "nonfinite_updates",
)
LOSS_NAMES = ("loss",)
ACCURACY_NAMES = ("sparse_categorical_accuracy", "accuracy")


def _items(value: Any):
    if isinstance(value, Mapping):
        return list(value.items())
    if hasattr(value, "_asdict"):
        return list(value._asdict().items())
    if hasattr(value, "items") and callable(value.items):
        try:
            return [(k, v) for k, v in value.items() if k is not None]
        except TypeError:
            return []
    try:
        import attrs

        if attrs.has(type(value)):
            return [(f.name, getattr(value, f.name)) for f in attrs.fields(type(value))]
    except ImportError:  # pragma: no cover
        pass
    return []


def find_metric(metrics: Any, names: Sequence[str], prefer: Sequence[str] = ()) -> Optional[float]:
    """The first scalar named one of ``names`` in a nested metrics structure (sections in ``prefer`` first)."""
    items = _items(metrics)
    for name in names:
        for key, value in items:
            if key == name and not _items(value):
                try:
                    return float(value)
                except (TypeError, ValueError):
                    pass
    ordered = sorted(items, key=lambda kv: 0 if kv[0] in prefer else 1)
    for _, value in ordered:
        if _items(value):
            found = find_metric(value, names, prefer)
            if found is not None:
                return found
    return None


def write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})


def plot_metrics(path: Path, rows: List[Dict[str, Any]], title: str = "") -> None:
    """Loss and accuracy against rounds, side by side, as a PNG."""
    from fedcore._extras import require

    matplotlib = require("matplotlib", "cli", "fedcore train's plot")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in rows]
    marker = "o" if len(rows) <= 30 else None
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    series = (
        (loss_ax, "train_loss", "train (clients of the round)", "tab:blue", "-"),
        (loss_ax, "heldout_loss", "held-out test clients", "tab:orange", "--"),
        (acc_ax, "train_accuracy", "train (clients of the round)", "tab:blue", "-"),
        (acc_ax, "heldout_accuracy", "held-out test clients", "tab:orange", "--"),
    )
    for ax, key, label, color, style in series:
        points = [(x, r[key]) for x, r in zip(rounds, rows) if r.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, linestyle=style, marker=marker, markersize=4, linewidth=2, color=color, label=label)
    loss_ax.set_title("Loss")
    loss_ax.set_ylabel("loss (cross-entropy)")
    acc_ax.set_title("Accuracy")
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(0.0, 1.0)
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class TensorBoardLog:
    """Scalars per round under ``directory``: train/loss, train/accuracy, heldout/loss, heldout/accuracy, seconds.

    Written with TensorFlow's own summary ops and the metadata that marks a
    summary as a scalar, so the ``tensorboard`` package is needed only to view them.
    """

    TAGS = {
        "train_loss": "train/loss",
        "train_accuracy": "train/accuracy",
        "heldout_loss": "heldout/loss",
        "heldout_accuracy": "heldout/accuracy",
        "seconds": "seconds_per_round",
    }

    def __init__(self, directory: Path):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(directory))
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DATA_CLASS_SCALAR,
        )

    def write(self, row: Dict[str, Any]) -> None:
        tf = self._tf
        with self._writer.as_default():
            for key, tag in self.TAGS.items():
                if row.get(key) is not None:
                    tf.summary.write(
                        tag, tf.constant(row[key], tf.float32), step=row["round"], metadata=self._metadata
                    )
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
