"""Gate rules: grammar, CI-bound semantics, previous reports, exit codes and JUnit XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from helpers import run_cli

from vtpdeploy.deploy.bench.rules import GateError, evaluate, junit_xml, parse_rule


def _result(model, role, backend="ort", batch=1, p50=10.0, p90=12.0, mem=300.0):
    lat = {"mean": p50, "p50": p50, "p90": p90, "p95": p90, "p99": p90, "min": p50 / 2, "max": p90 * 2}
    return {"model": model, "role": role, "backend": backend, "batch": batch, "latency_ms": lat,
            "throughput_ips": 1000.0 * batch / p50, "peak_mem_mb": mem, "macs": 100, "params": 10, "file_mb": 1.0}


def make_report(speedup=2.0, ci=(1.8, 2.2), p50=10.0, mem=300.0):
    return {
        "schema_version": 1,
        "results": [_result("base", "baseline", p50=20.0, p90=25.0, mem=900.0), _result("cand", "candidate", p50=p50, mem=mem),
                    _result("cand", "candidate", batch=8, p50=40.0, p90=45.0, mem=mem)],
        "comparison": [{"candidate": "cand", "baseline": "base", "backend": "ort", "batch": 1, "speedup": speedup,
                        "speedup_ci": list(ci), "mac_ratio": 2.0, "efficiency": speedup / 2,
                        "efficiency_ci": [ci[0] / 2, ci[1] / 2]}],
        "environment": {},
    }


def _passed(report, rules, previous=None):
    return [r.passed for r in evaluate(report, rules, previous)]


def test_grammar():
    r = parse_rule("p90_ms <= 20")
    assert (r.metric, r.op, r.value, r.previous) == ("p90_ms", "<=", 20.0, False)
    r = parse_rule("  p50_ms<=previous*1.05 ")
    assert r.previous and r.prev_op == "*" and r.prev_k == 1.05
    r = parse_rule({"rule": "speedup >= 1.6", "backend": "ort", "batch": 1})
    assert r.select == {"backend": "ort", "batch": 1}
    for bad in ["p90_ms <= ", "p90_ms => 3", "p90_ms <= 20; import os", "__import__('os') <= 1", "speedup >= previous ** 2", 5]:
        with pytest.raises(GateError):
            parse_rule(bad)
    with pytest.raises(GateError, match="unknown metric 'latency'"):
        parse_rule("latency <= 3")
    with pytest.raises(GateError, match="selectors"):
        parse_rule({"rule": "p90_ms <= 3", "colour": "red"})


def test_absolute_rules_apply_to_candidates_only():
    rep = make_report()
    assert _passed(rep, ["p90_ms <= 50", "peak_mem_mb <= 600"]) == [True, True]  # baseline's 900 MB is not gated
    assert _passed(rep, ["p90_ms <= 20"]) == [False]  # batch 8 is at 45 ms
    assert _passed(rep, [{"rule": "p90_ms <= 20", "batch": 1}]) == [True]
    res = evaluate(rep, ["p90_ms <= 20"])[0]
    assert "cand ort b8" in res.message and len(res.checks) == 2


def test_speedup_uses_ci_bounds():
    rep = make_report(speedup=2.0, ci=(1.5, 2.5))
    assert _passed(rep, ["speedup >= 1.6"]) == [False]  # point passes, lower bound does not
    assert _passed(rep, ["speedup >= 1.4"]) == [True]
    assert _passed(rep, ["speedup <= 2.4"]) == [False]  # upper bound 2.5
    assert _passed(rep, ["speedup <= 2.6", "efficiency >= 0.7", "mac_ratio == 2"]) == [True, True, True]


def test_previous_rules():
    old, new = make_report(p50=10.0), make_report(p50=10.4)
    assert _passed(new, ["p50_ms <= previous * 1.05"], old) == [True]
    worse = make_report(p50=11.0)
    assert _passed(worse, ["p50_ms <= previous * 1.05"], old) == [False]
    with pytest.raises(GateError, match="no --previous"):
        evaluate(new, ["p50_ms <= previous * 1.05"])
    old["results"] = old["results"][:2]
    with pytest.raises(GateError, match="no entry for cand ort b8"):
        evaluate(new, ["p50_ms <= previous * 1.05"], old)


def test_bad_reports():
    with pytest.raises(GateError):
        evaluate({"results": []}, ["p90_ms <= 1"])
    with pytest.raises(GateError, match="malformed"):
        evaluate({"schema_version": 1, "results": [{"model": "x"}]}, ["p90_ms <= 1"])
    rep = make_report()
    rep["comparison"] = []
    with pytest.raises(GateError, match="has no comparison entries"):
        evaluate(rep, ["speedup >= 1"])


def test_junit_xml():
    res = evaluate(make_report(), ["p90_ms <= 50", "speedup >= 1.9"])
    root = ET.fromstring(junit_xml(res))
    assert root.tag == "testsuite" and root.get("tests") == "2" and root.get("failures") == "1"
    cases = root.findall("testcase")
    assert [c.get("name") for c in cases] == ["p90_ms <= 50", "speedup >= 1.9"]
    assert cases[0].find("failure") is None
    fail = cases[1].find("failure")
    assert fail is not None and "1.8" in fail.get("message") and "CI bound" in fail.get("message")


# ---- CLI exit codes ---------------------------------------------------------------------------------
@pytest.fixture()
def files(tmp_path):
    rep = tmp_path / "report.json"
    rep.write_text(json.dumps(make_report()))
    old = tmp_path / "old.json"
    old.write_text(json.dumps(make_report(p50=5.0)))

    def rules(*lines):
        p = tmp_path / f"rules{len(list(tmp_path.glob('rules*')))}.yaml"
        p.write_text("gates:\n" + "".join(f"  - {json.dumps(x)}\n" for x in lines))
        return p

    return tmp_path, rep, old, rules


def test_cli_gate_exit_codes(files):
    tmp, rep, old, rules = files
    ok = run_cli("gate", rep, rules("p90_ms <= 50", "speedup >= 1.6", "peak_mem_mb <= 600"), "--junit", tmp / "j.xml")
    assert ok.returncode == 0, ok.stderr
    assert "PASS" in ok.stdout and ET.parse(tmp / "j.xml").getroot().get("failures") == "0"

    fail = run_cli("gate", rep, rules("p90_ms <= 20", "speedup >= 1.6"), "--junit", tmp / "f.xml")
    assert fail.returncode == 1 and "FAIL" in fail.stdout
    assert ET.parse(tmp / "f.xml").getroot().get("failures") == "1"

    prev = run_cli("gate", rep, rules("p50_ms <= previous * 1.05"), "--previous", old)
    assert prev.returncode == 1  # 10 ms now vs 5 ms before


@pytest.mark.parametrize("case", ["unknown_metric", "malformed", "bad_report", "no_previous", "missing_rules"])
def test_cli_gate_bad_input(files, case):
    tmp, rep, old, rules = files
    args = {
        "unknown_metric": ("gate", rep, rules("latency <= 3")),
        "malformed": ("gate", rep, rules("p90_ms <<= 3")),
        "bad_report": ("gate", tmp / "rules_x.yaml", rules("p90_ms <= 3")),
        "no_previous": ("gate", rep, rules("p50_ms <= previous * 1.05")),
        "missing_rules": ("gate", rep, tmp / "nope.yaml"),
    }[case]
    if case == "bad_report":
        args = ("gate", rules("p90_ms <= 3"), rules("p90_ms <= 3"))  # a YAML file is not a report
    res = run_cli(*args)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.stderr
