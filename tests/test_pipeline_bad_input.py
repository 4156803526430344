"""Bad pipeline input: exit 2, one line naming the problem, no traceback, run dir untouched."""

from __future__ import annotations

import pickle

import pytest
import torch
from pipeline_helpers import (
    assert_one_line_error,
    run_cli,
    run_cli_inprocess,
    tree_digest,
    write_recipe,
)


@pytest.fixture
def existing_run(tmp_path):
    """A run dir holding earlier results that must survive every bad invocation."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"stages": {}}')
    (run / "report.json").write_text('{"accuracy": {"finetuned": 99.0}}')
    (run / "model.safetensors").write_bytes(b"earlier weights")
    return run


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _cases(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  name: [unclosed\n")
    empty_data = tmp_path / "empty_data"
    (empty_data / "train").mkdir(parents=True)
    (empty_data / "val").mkdir()
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"
    evil.write_bytes(pickle.dumps({"weights": _Evil(marker)}))
    mismatched = tmp_path / "other.pt"
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, mismatched)
    return {
        "malformed yaml": ([bad_yaml], ["malformed YAML", "at line"]),
        "unknown key": ([write_recipe(tmp_path / "k.yaml", {"prune.ratee": 0.3})], ["unknown key 'prune.ratee'"]),
        "unknown override key": ([write_recipe(tmp_path / "o.yaml"), "--set", "sparsify.lambda=1"],
                                 ["unknown key 'sparsify.lambda'"]),
        "rate too high": ([write_recipe(tmp_path / "r1.yaml", {"prune.rate": 1.0})], ["prune.rate", "(0, 1)"]),
        "rate zero via --set": ([write_recipe(tmp_path / "r0.yaml"), "--set", "prune.rate=0"], ["prune.rate"]),
        "missing dataset": ([write_recipe(tmp_path / "d.yaml", {"data.kind": "imagefolder",
                                                                  "data.path": str(tmp_path / "nope")})],
                            ["data.path", "does not exist"]),
        "empty dataset": ([write_recipe(tmp_path / "e.yaml", {"data.kind": "imagefolder",
                                                                "data.path": str(empty_data)})],
                          ["data.path", "no class folders"]),
        "unknown model": ([write_recipe(tmp_path / "m.yaml", {"model.name": "vit_does_not_exist"})],
                          ["unknown timm model", "vit_does_not_exist"]),
        "unsupported model": ([write_recipe(tmp_path / "u.yaml", {"model.name": "resnet18", "model.kwargs": {}})],
                              ["resnet18", "not a timm VisionTransformer"]),
        "corrupt checkpoint": ([write_recipe(tmp_path / "c.yaml", {"model.checkpoint": str(corrupt)})],
                               ["corrupt safetensors"]),
        "malicious checkpoint": ([write_recipe(tmp_path / "v.yaml", {"model.checkpoint": str(evil)})],
                                 ["refused"]),
        "mismatched checkpoint": ([write_recipe(tmp_path / "x.yaml", {"model.checkpoint": str(mismatched)})],
                                  ["does not fit the model"]),
        "missing checkpoint": ([write_recipe(tmp_path / "y.yaml", {"model.checkpoint": str(tmp_path / "no.pt")})],
                               ["not found"]),
        "missing recipe": ([tmp_path / "absent.yaml"], ["recipe not found"]),
    }, marker


CASE_NAMES = ["malformed yaml", "unknown key", "unknown override key", "rate too high", "rate zero via --set",
              "missing dataset", "empty dataset", "unknown model", "unsupported model", "corrupt checkpoint",
              "malicious checkpoint", "mismatched checkpoint", "missing checkpoint", "missing recipe"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_exits_2_with_one_line(case, tmp_path, existing_run):
    cases, marker = _cases(tmp_path)
    args, needles = cases[case]
    before = tree_digest(existing_run)
    proc = run_cli_inprocess("pipeline", *args, "--out", existing_run)
    assert_one_line_error(proc, *needles)
    assert tree_digest(existing_run) == before, "earlier results were modified"
    assert not marker.exists(), "code from the malicious checkpoint ran"


def test_debug_shows_traceback(tmp_path):
    proc = run_cli("--debug", "pipeline", write_recipe(tmp_path / "r.yaml", {"prune.rate": 2}))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_refuses_foreign_non_empty_out_dir(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    proc = run_cli("pipeline", write_recipe(tmp_path / "r.yaml"), "--out", foreign)
    assert_one_line_error(proc, "not a vtpdeploy run dir")
    assert (foreign / "holiday.jpg").read_bytes() == b"precious"


def test_second_pipeline_on_locked_run_dir_exits_2(tmp_path, existing_run):
    import fcntl

    with open(existing_run / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = tree_digest(existing_run)
        proc = run_cli("pipeline", write_recipe(tmp_path / "r.yaml"), "--out", existing_run)
        assert_one_line_error(proc, "another vtpdeploy pipeline")
        assert tree_digest(existing_run) == before
