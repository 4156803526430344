"""When a latency table is measured, reused, checked or refused (`latency.obtain_table`), and the cache commands.

Every device here is a deterministic fake: spreads and ratios are injected, nothing is timed.
"""

from __future__ import annotations

import json

import pytest
from conftest import gated_random, make_vit
from helpers import FakeMeasure, run_cli_inprocess

from vtpdeploy.latency import NOISY_SPREAD_PCT, list_tables, obtain_table
from vtpdeploy.latency.cache import CHECK_TOLERANCE_PCT

KW = dict(device_label="cpu-A", points=2, iters=4)


@pytest.fixture(scope="module")
def model():
    return gated_random(make_vit(embed_dim=64, num_heads=2, depth=2), seed=5)


def Noisy(*spreads: float, **kw) -> FakeMeasure:
    """A fake device whose i-th table reports spreads[i] % for its entries."""
    return FakeMeasure(spreads=spreads, **kw)


def test_a_noisy_table_is_measured_again_then_used_once_with_a_warning_and_never_cached(model, tmp_path):
    messages = []
    device = Noisy(NOISY_SPREAD_PCT + 40, NOISY_SPREAD_PCT + 20)
    table, source = obtain_table(model, "ort", cache_dir=tmp_path, measure_fn=device, progress=messages.append, **KW)
    assert device.stems == 2  # measured twice
    assert table.rounds == 8 and table.spread_pct == NOISY_SPREAD_PCT + 20
    assert source.source == "fresh, not cached" and list(tmp_path.glob("*.json")) == []
    assert source.warning.startswith("warning: latency table spread 50.0 % > 30 %")
    assert "not cached" in source.warning and "\n" not in source.warning and source.warning in messages
    assert source.spread_pct == 50.0 and source.check is None


def test_a_table_quiet_on_the_second_try_is_cached(model, tmp_path):
    device = Noisy(NOISY_SPREAD_PCT + 40, 8.0)
    table, source = obtain_table(model, "ort", cache_dir=tmp_path, measure_fn=device, **KW)
    assert source.source == "fresh" and source.warning is None and table.spread_pct == 8.0 and table.rounds == 8
    assert [r["spread_pct"] for r in list_tables(tmp_path)] == [8.0]


def test_a_cached_table_is_checked_and_reused_when_the_ratio_holds(model, tmp_path):
    quiet = Noisy(8.0)
    obtain_table(model, "ort", cache_dir=tmp_path, measure_fn=quiet, **KW)
    calls = quiet.calls
    table, source = obtain_table(model, "ort", cache_dir=tmp_path, measure_fn=quiet, **KW)
    assert quiet.calls == calls + 2  # the check: unpruned and narrowest whole model, nothing else
    assert source.source == "cache" and source.age_s is not None and source.age_s >= 0
    assert source.spread_pct == 8.0 and source.check["keep"] == 0.4
    assert source.check["mismatch_pct"] == pytest.approx(0.0, abs=1e-6)


def test_a_cached_table_that_disagrees_with_the_check_is_measured_again(model, tmp_path):
    messages = []
    obtain_table(model, "ort", cache_dir=tmp_path, measure_fn=Noisy(8.0), **KW)
    # the machine now runs small models relatively slower: a fixed 0.5 ms per whole model bends the ratio
    now = Noisy(8.0, whole_offset=0.5)
    table, source = obtain_table(model, "ort", cache_dir=tmp_path, measure_fn=now, progress=messages.append, **KW)
    assert source.check["mismatch_pct"] > CHECK_TOLERANCE_PCT
    assert source.source == "fresh" and any("measuring it again" in m for m in messages)
    assert table.calibration.offset_ms == pytest.approx(0.5, abs=1e-6)  # the new table is the new device's
    again, src = obtain_table(model, "ort", cache_dir=tmp_path, measure_fn=now, **KW)
    assert src.source == "cache" and again == table and len(list(tmp_path.glob("*.json"))) == 1


def test_cache_commands_list_and_clear(model, tmp_path):
    obtain_table(model, "ort", cache_dir=tmp_path, measure_fn=Noisy(8.0), **KW)
    obtain_table(model, "torch", cache_dir=tmp_path, measure_fn=Noisy(45.0, 12.0), check=False, **KW)
    (tmp_path / "junk.json").write_text("{}")
    listed = run_cli_inprocess("latency-cache", "list", "--dir", tmp_path, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["file"]: r for r in json.loads(listed.stdout)}
    assert rows["junk.json"]["readable"] is False
    good = [r for r in rows.values() if r["readable"]]
    assert sorted((r["backend"], r["device"], r["spread_pct"]) for r in good) == [("ort", "cpu-A", 8.0),
                                                                                  ("torch", "cpu-A", 12.0)]
    assert all(r["age_s"] >= 0 and r["file"].startswith(f"{r['backend']}-b1-") for r in good)
    shown = run_cli_inprocess("latency-cache", "list", "--dir", tmp_path)
    assert "cpu-A" in shown.stdout and "8.0 %" in shown.stdout and "not a latency table" in shown.stdout
    bad = run_cli_inprocess("latency-cache", "clear", "--dir", tmp_path, "--backend", "trt")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --backend 'trt'") and len(list(tmp_path.glob("*"))) == 3
    cleared = run_cli_inprocess("latency-cache", "clear", "--dir", tmp_path, "--backend", "torch")
    assert cleared.returncode == 0 and "removed 1 latency table(s)" in cleared.stdout
    assert sorted(r["backend"] for r in list_tables(tmp_path)) == ["?", "ort"]
    assert run_cli_inprocess("latency-cache", "clear", "--dir", tmp_path).returncode == 0
    assert list(tmp_path.glob("*")) == []
