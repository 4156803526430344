"""benchmarks/readme_numbers.py: the quickstart/digits results pages and their JSON data, the README's quickstart
table quoting that data, and the tolerance check CI runs on a fresh quickstart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import readme_numbers as rn  # noqa: E402


def fake_run(tmp: Path, rec: dict, *, acc_shift: float = 0.0, params_scale: float = 1.0, torch: str = "9.9",
             cpu: str | None = None, name: str = "run") -> Path:
    """A quickstart run dir with `rec`'s numbers (shifted), run on `cpu` (default: the main record's CPU)."""
    run = tmp / name
    run.mkdir()
    report = {
        "accuracy": {k: v + acc_shift for k, v in rec["accuracy"].items()},
        "params": {k: round(v * params_scale) for k, v in rec["params"].items()},
        "macs": rec["macs"], "compaction": {"max_abs_diff": rec["max_abs_diff"]}, "wall_seconds": 1.0,
    }
    (run / "report.json").write_text(json.dumps(report))
    (run / "manifest.json").write_text(json.dumps({"packages": {**rec["packages"], "torch": torch},
                                                   "cpu": cpu or rec.get("cpu") or "test CPU"}))
    return run


@pytest.fixture
def readme_record() -> dict:
    return rn.read_record()


@pytest.fixture
def pages(tmp_path, readme_record) -> Path:
    """A results dir holding the recorded quickstart (main CPU only) and its page."""
    main = {k: v for k, v in readme_record.items() if k != "other_cpus"}
    rn.write_quickstart_page(main, tmp_path / "results")
    return tmp_path / "results"


def test_the_sidecar_carries_the_quickstart_record(readme_record):
    assert set(readme_record["accuracy"]) == set(rn.STAGES)
    assert readme_record["params"]["compact"] < readme_record["params"]["unpruned"]
    assert "torch" in readme_record["packages"]


def test_readme_is_a_front_door_quoting_the_recorded_numbers(readme_record):
    """<= 150 lines, no HTML data comments, and its quickstart table says what quickstart.json holds."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150 and "<!--" not in text
    acc, params, macs = readme_record["accuracy"], readme_record["params"], readme_record["macs"]
    for needle in (f"{acc['unpruned']:.2f} %", f"**{acc['finetuned']:.2f} %**", f"{params['unpruned']:,}",
                   f"{params['compact']:,}", f"{macs['unpruned'] / 1e6:.2f} M", f"{macs['compact'] / 1e6:.2f} M"):
        assert needle in text, needle
    page = (ROOT / "docs" / "results" / "quickstart.md").read_text()
    assert rn.quickstart_table(readme_record) in page and "<!--" not in page


def test_pages_are_rewritten_from_their_data_alone(tmp_path):
    """`--pages`: the same pages again from the JSON sidecars, without running anything."""
    results = tmp_path / "results"
    results.mkdir()
    for name in ("quickstart", "digits"):
        for suffix in (".json", ".md"):
            (results / f"{name}{suffix}").write_bytes((ROOT / "docs" / "results" / f"{name}{suffix}").read_bytes())
    rn.rewrite_pages(results)
    for name in ("quickstart", "digits"):
        assert (results / f"{name}.md").read_text() == (ROOT / "docs" / "results" / f"{name}.md").read_text()
        assert json.loads((results / f"{name}.json").read_text()) == json.loads(
            (ROOT / "docs" / "results" / f"{name}.json").read_text())


@pytest.mark.parametrize("acc_shift, params_scale, ok", [
    (0.0, 1.0, True), (0.4, 1.0, True), (-0.6, 1.0, False), (0.0, 1.019, True), (0.0, 1.03, False),
])
def test_check_applies_the_tolerances(tmp_path, readme_record, acc_shift, params_scale, ok):
    run = fake_run(tmp_path, readme_record, acc_shift=acc_shift, params_scale=params_scale)
    problems = rn.check(run)
    assert (problems == []) is ok
    if not ok:  # a mismatch names the versions of both runs
        assert any("versions here" in p and "'torch': '9.9'" in p for p in problems)
        assert any("versions of the recorded run" in p for p in problems)


def test_written_page_round_trips(tmp_path, readme_record, pages):
    assert rn.read_record(pages) == {k: v for k, v in readme_record.items() if k != "other_cpus"}
    assert rn.check(fake_run(tmp_path, readme_record), results_dir=pages) == []


def test_cli_check_exit_codes(tmp_path, readme_record):
    script = ROOT / "benchmarks" / "readme_numbers.py"
    bad = subprocess.run([sys.executable, str(script), "--check", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    run = fake_run(tmp_path, readme_record, acc_shift=1.0)
    off = subprocess.run([sys.executable, str(script), "--check", str(run)], capture_output=True, text=True)
    assert off.returncode == 1 and "top-1" in off.stderr


def test_a_run_is_checked_against_its_own_cpus_reference(tmp_path, readme_record, pages):
    """Seeded runs differ between CPU kinds: a run on a CPU with its own reference run is held to that one."""
    readme = pages  # the results dir: quickstart.json + quickstart.md
    main = {k: v for k, v in readme_record.items() if k != "other_cpus"}
    other_cpu = "Other CPU 9000"
    other_run = fake_run(tmp_path, main, acc_shift=1.1, cpu=other_cpu, name="other")
    assert any("top-1" in p for p in rn.check(other_run, results_dir=readme))  # no reference for that CPU yet
    assert rn.add_cpu(other_run, results_dir=readme) == other_cpu
    record = rn.read_record(readme)
    assert record["other_cpus"][other_cpu]["accuracy"]["finetuned"] == pytest.approx(main["accuracy"]["finetuned"] + 1.1)
    assert f"On {other_cpu} the same command gives" in (readme / "quickstart.md").read_text()
    assert rn.check(other_run, results_dir=readme) == []  # held to its own CPU's reference now
    assert rn.check(fake_run(tmp_path, main, name="main"), results_dir=readme) == []  # the main CPU still to the main one
    drift = fake_run(tmp_path, main, acc_shift=1.1 + 0.6, cpu=other_cpu, name="drift")
    problems = rn.check(drift, results_dir=readme)
    assert any("top-1" in p for p in problems) and any(other_cpu in p for p in problems)
    before = (readme / "quickstart.json").read_text()
    with pytest.raises(ValueError, match="regenerate instead"):  # the main record's CPU is regenerated, not added
        rn.add_cpu(fake_run(tmp_path, main, name="same"), results_dir=readme)
    assert (readme / "quickstart.json").read_text() == before  # refused before anything is written


def test_regenerating_on_another_cpu_keeps_the_old_main_record_as_a_reference(readme_record):
    """A regeneration on CPU B makes B the main record; A's reference run must stay, or CI on A would fail."""
    main = {k: v for k, v in readme_record.items() if k != "other_cpus"}
    main["cpu"] = "CPU A"
    main["other_cpus"] = {"CPU B": {"accuracy": {"finetuned": 1.0}}, "CPU C": {"accuracy": {"finetuned": 2.0}}}
    kept = rn.kept_references(main, "CPU B")
    assert set(kept) == {"CPU A", "CPU C"}  # B is the new main record; A moves to the references
    assert kept["CPU A"]["accuracy"] == main["accuracy"] and kept["CPU A"]["params"] == main["params"]
    assert kept["CPU C"] == {"accuracy": {"finetuned": 2.0}}
    same = rn.kept_references(main, "CPU A")  # regenerating on the main record's CPU replaces it
    assert set(same) == {"CPU B", "CPU C"}


def test_digits_table_names_the_removed_sublayers():
    row = {"method": "m", "rate": 0.6, "realised_rate": 0.601, "pruned": 95.1, "finetuned": 98.4, "params": 1000,
           "macs": 2e6, "live_heads": [6, 6, 6, 6]}
    table = rn.digits_table([{**row, "removed_sublayers": {"attn": [], "mlp": [1, 2]}}, row], {})
    lines = [ln for ln in table.splitlines() if ln.startswith("| m |")]
    assert lines[0].endswith("| 6,6,6,6 (−2 mlp removed) |") and lines[1].endswith("| 6,6,6,6 |")
    assert "<!--" not in table
