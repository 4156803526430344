"""Per-epoch training logs: timm-style `summary.csv` per stage and optional TensorBoard events.

Both are written by rank 0 only (the pipeline creates no logger elsewhere). Resume-safe: logging epoch `e`
first drops every row with epoch >= e, so a stage resumed from a checkpoint never repeats an epoch; the CSV is
rewritten atomically each epoch, and TensorBoard is opened with `purge_step=e` (events of a killed run from
epoch e on are hidden).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import RecipeError
from ..fileio import atomic_write_text

# timm's `update_summary` convention: epoch, train_*, eval_*, lr; plus the VTP extras.
SUMMARY_FIELDS = ("epoch", "train_loss", "train_ce", "train_l1", "eval_top1", "gate_abs_mean", "lr", "epoch_time_s")
LOG_OUTPUTS = ("csv", "tensorboard")


def summary_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "logs" / stage / "summary.csv"


def require_tensorboard() -> None:
    """One-line error when `log: [tensorboard]` is asked for but the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise RecipeError("log: tensorboard needs the tensorboard package: pip install 'vtpdeploy[tensorboard]'") from None


def read_summary(path: Path) -> list[dict]:
    """Rows of a summary.csv as dicts of floats (epoch as int); [] when absent. Unparsable cells become None."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for raw in csv.DictReader(io.StringIO(path.read_text())):
        row: dict = {}
        for k, v in raw.items():
            try:
                row[k] = float(v) if v not in ("", None) else None
            except ValueError:
                row[k] = None
        if row.get("epoch") is None:
            continue
        row["epoch"] = int(row["epoch"])
        rows.append(row)
    return rows


class EpochLogger:
    """Writes one row per finished epoch of one stage to `logs/<stage>/summary.csv` and/or TensorBoard."""

    def __init__(self, run_dir: Path, stage: str, outputs: list[str] | tuple[str, ...] = ("csv",)):
        self.stage = stage
        self.dir = Path(run_dir) / "logs" / stage
        self.csv_path = self.dir / "summary.csv"
        self.outputs = tuple(outputs)
        self._writer = None
        if "tensorboard" in self.outputs:
            require_tensorboard()

    def log(self, epoch: int, row: dict) -> None:
        row = {"epoch": epoch, **{k: row.get(k) for k in SUMMARY_FIELDS if k != "epoch"}}
        if "csv" in self.outputs:
            kept = [r for r in self._existing_rows() if r["epoch"] < epoch]
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
            w.writeheader()
            for r in [*kept, row]:
                w.writerow({k: ("" if r.get(k) is None else r[k]) for k in SUMMARY_FIELDS})
            atomic_write_text(self.csv_path, buf.getvalue())
        if "tensorboard" in self.outputs:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.dir), purge_step=epoch)
            for k, v in row.items():
                if k != "epoch" and v is not None:
                    self._writer.add_scalar(f"{self.stage}/{k}", float(v), epoch)
            self._writer.flush()

    def _existing_rows(self) -> list[dict]:
        return [{k: r.get(k) for k in SUMMARY_FIELDS} for r in read_summary(self.csv_path)]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def gate_abs_mean(model) -> float | None:
    """Mean |â| over every gate of `model`; None for an ungated model."""
    import torch

    from ..prune.gates import iter_gates

    gates = [g.module.gate.detach().abs().flatten().float().cpu() for g in iter_gates(model)]
    return float(torch.cat(gates).mean()) if gates else None


def epoch_hook(stage: str, epochs: int, model, evaluate, logger: EpochLogger | None, events):
    """The `on_epoch(epoch, metrics)` callback of `fit`: validate, then log the row and emit `epoch_end`.

    Validation runs only when something records it (a logger or JSON events), i.e. on rank 0.
    """

    def on_epoch(epoch: int, metrics: dict) -> None:
        if logger is None and not events.enabled:
            return
        row = {"train_loss": metrics["loss"], "train_ce": metrics["ce"], "train_l1": metrics["l1"],
               "eval_top1": evaluate(), "gate_abs_mean": gate_abs_mean(model), "lr": metrics.get("lr"),
               "epoch_time_s": metrics.get("epoch_seconds")}
        if logger is not None:
            logger.log(epoch, row)
        events.emit("epoch_end", stage=stage, epoch=epoch, epochs=epochs, **row)

    return on_epoch
