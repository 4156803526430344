"""Per-epoch logs: timm-style summary.csv, optional TensorBoard, both resume-safe (no duplicated epochs)."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import assert_one_line_error, run_cli, run_cli_inprocess, write_recipe

from vtpdeploy.errors import RecipeError
from vtpdeploy.train.epoch_log import SUMMARY_FIELDS, EpochLogger, read_summary, require_tensorboard


def _row(loss: float) -> dict:
    return {"train_loss": loss, "train_ce": loss, "train_l1": 0.0, "eval_top1": 50.0, "gate_abs_mean": None,
            "lr": 1e-3, "epoch_time_s": 0.5}


def test_logging_an_epoch_again_drops_it_and_every_later_row(tmp_path):
    log = EpochLogger(tmp_path, "sparsify", ["csv"])
    for e in range(4):
        log.log(e, _row(float(e)))
    # A resumed run restarts at epoch 2: rows 2 and 3 of the killed run must not survive.
    resumed = EpochLogger(tmp_path, "sparsify", ["csv"])
    resumed.log(2, _row(20.0))
    rows = read_summary(tmp_path / "logs" / "sparsify" / "summary.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["train_loss"] for r in rows] == [0.0, 1.0, 20.0]
    assert rows[0]["gate_abs_mean"] is None and rows[0]["lr"] == 1e-3
    text = (tmp_path / "logs" / "sparsify" / "summary.csv").read_text()
    assert text.splitlines()[0] == ",".join(SUMMARY_FIELDS)
    assert not [p for p in (tmp_path / "logs" / "sparsify").iterdir() if p.name != "summary.csv"]  # no temp files


def test_tensorboard_purges_epochs_of_a_killed_run(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = EpochLogger(tmp_path, "finetune", ["tensorboard"])
    for e in range(4):
        log.log(e, _row(float(e)))
    log.close()  # (a kill -9 would leave the same events on disk: each epoch is flushed)
    resumed = EpochLogger(tmp_path, "finetune", ["tensorboard"])
    for e in (2, 3):
        resumed.log(e, _row(10.0 * e))
    resumed.close()
    acc = EventAccumulator(str(tmp_path / "logs" / "finetune"))
    acc.Reload()
    events = acc.Scalars("finetune/train_loss")
    assert [e.step for e in events] == [0, 1, 2, 3]
    assert [e.value for e in events] == pytest.approx([0.0, 1.0, 20.0, 30.0])
    assert not (tmp_path / "logs" / "finetune" / "summary.csv").exists()  # csv was not asked for


def test_tensorboard_asked_for_but_missing_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.raises(RecipeError, match="pip install 'vtpdeploy\\[tensorboard\\]'"):
        require_tensorboard()
    recipe = write_recipe(tmp_path / "r.yaml", {"log": ["csv", "tensorboard"]})
    proc = run_cli_inprocess("pipeline", str(recipe), "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "tensorboard")
    assert not (tmp_path / "run").exists()  # checked before the run dir is touched


def test_unknown_log_output_is_a_recipe_error(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", {"log": ["wandb"]})
    assert_one_line_error(run_cli_inprocess("pipeline", str(recipe), "--out", str(tmp_path / "run")), "log")


def test_log_off_writes_no_logs(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", {"log": [], "train.epochs": 1, "sparsify.epochs": 1,
                                                "finetune.epochs": 1})
    proc = run_cli_inprocess("pipeline", str(recipe), "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "run" / "logs").exists()
    assert (tmp_path / "run" / "report.md").is_file()  # curves then come from report.json


@pytest.mark.slow
def test_kill_9_mid_stage_then_resume_leaves_no_duplicated_epoch(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", {"sparsify.epochs": 5, "train.epochs": 1, "finetune.epochs": 1})
    run = tmp_path / "run"
    # SIGKILL right after the 3rd sparsify checkpoint (= after epoch 2 finished; resume starts at epoch 3).
    killed = run_cli("pipeline", recipe, "--out", run, env={"VTPDEPLOY_CRASH_AFTER_CHECKPOINT": "sparsify:3"})
    assert killed.returncode == -9, killed.stderr
    before = read_summary(run / "logs" / "sparsify" / "summary.csv")
    assert [r["epoch"] for r in before] == [0, 1, 2]
    # Simulate a crash between the log row and the checkpoint as well: a stray row the resume must drop.
    path = run / "logs" / "sparsify" / "summary.csv"
    path.write_text(path.read_text() + "3,9.0,9.0,9.0,1.0,0.5,0.001,1.0\n")
    done = run_cli("pipeline", recipe, "--out", run)
    assert done.returncode == 0, done.stderr
    assert "sparsify: resuming from epoch checkpoint 3/5" in done.stderr
    rows = read_summary(path)
    epochs = [r["epoch"] for r in rows]
    assert epochs == sorted(set(epochs)) == [0, 1, 2, 3, 4]  # strictly increasing, no duplicates
    assert rows[3]["train_loss"] != 9.0  # the stray row was replaced by the resumed epoch
    report = json.loads((run / "report.json").read_text())
    assert [r["train_loss"] for r in rows] == pytest.approx(report["curves"]["sparsify"]["loss"])
