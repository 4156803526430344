"""Jetson `tegrastats`: parse its lines, and sample it in a background process during a run.

Handles JetPack 4/5/6 lines (`GR3D_FREQ 10%@1300`, `GR3D_FREQ 10%`, rails `VDD_IN 5139mW/5139mW`,
JetPack 4 `POM_5V_IN 3000/3000`) and JetPack 7 / Thor-Orin lines (`GR3D_FREQ 12%@[1300,1300]`,
rails `VDD_GPU_SOC 5139mW/5139mW/5139mW` = current/average/max).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[([\d,]+)\]|@(\d+))?")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_RAIL_MW = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)mW/(\d+)mW(?:/(\d+)mW)?")
_RAIL_OLD = re.compile(r"\b((?:POM|VDD|VIN)_[A-Z0-9_]+) (\d+)/(\d+)\b")


def parse_line(line: str) -> dict | None:
    """One tegrastats line -> {ram_used_mb, ram_total_mb, swap_*, gpu_load_pct, gpu_freq_mhz, cpu, rails}.

    Returns None for lines that carry neither RAM nor GPU nor rail data.
    """
    out: dict = {
        "ram_used_mb": None,
        "ram_total_mb": None,
        "swap_used_mb": None,
        "swap_total_mb": None,
        "gpu_load_pct": None,
        "gpu_freq_mhz": None,
        "cpu": [],
        "rails": {},
    }
    if m := _RAM.search(line):
        out["ram_used_mb"], out["ram_total_mb"] = int(m.group(1)), int(m.group(2))
    if m := _SWAP.search(line):
        out["swap_used_mb"], out["swap_total_mb"] = int(m.group(1)), int(m.group(2))
    if m := _GR3D.search(line):
        out["gpu_load_pct"] = int(m.group(1))
        if m.group(2):  # JetPack 7: one frequency per GPC; report the first (they are locked together)
            freqs = [int(f) for f in m.group(2).split(",") if f]
            out["gpu_freq_mhz"] = freqs[0] if freqs else None
            out["gpu_freq_mhz_all"] = freqs
        elif m.group(3):
            out["gpu_freq_mhz"] = int(m.group(3))
    if m := _CPU.search(line):
        for core in m.group(1).split(","):
            core = core.strip()
            cm = re.fullmatch(r"(\d+)%(?:@(\d+))?", core)
            out["cpu"].append(None if not cm else {"load_pct": int(cm.group(1)), "freq_mhz": _int(cm.group(2))})
    for m in _RAIL_MW.finditer(line):
        out["rails"][m.group(1)] = {"current_mw": int(m.group(2)), "avg_mw": int(m.group(3))}
        if m.group(4):
            out["rails"][m.group(1)]["max_mw"] = int(m.group(4))
    for m in _RAIL_OLD.finditer(line):
        out["rails"].setdefault(m.group(1), {"current_mw": int(m.group(2)), "avg_mw": int(m.group(3))})
    if out["ram_used_mb"] is None and out["gpu_load_pct"] is None and not out["rails"]:
        return None
    return out


def summarize(samples: list[dict]) -> dict | None:
    """Aggregate parsed samples: peak RAM, mean GPU load, last GPU freq, mean/peak power per rail."""
    samples = [s for s in samples if s]
    if not samples:
        return None
    ram = [s["ram_used_mb"] for s in samples if s["ram_used_mb"] is not None]
    load = [s["gpu_load_pct"] for s in samples if s["gpu_load_pct"] is not None]
    freq = [s["gpu_freq_mhz"] for s in samples if s["gpu_freq_mhz"] is not None]
    rails: dict[str, dict] = {}
    for name in {n for s in samples for n in s["rails"]}:
        cur = [s["rails"][name]["current_mw"] for s in samples if name in s["rails"]]
        rails[name] = {"current_mw": cur[-1], "avg_mw": round(sum(cur) / len(cur), 1), "max_mw": max(cur)}
    return {
        "samples": len(samples),
        "ram_used_max_mb": max(ram) if ram else None,
        "ram_used_min_mb": min(ram) if ram else None,
        "ram_total_mb": next((s["ram_total_mb"] for s in samples if s["ram_total_mb"]), None),
        "gpu_load_mean_pct": round(sum(load) / len(load), 1) if load else None,
        "gpu_freq_mhz": freq[-1] if freq else None,
        "rails": dict(sorted(rails.items())),
    }


class TegrastatsSampler:
    """Runs `tegrastats --interval MS` in a background process while the block is active."""

    def __init__(self, interval_ms: int = 100, exe: str = "tegrastats"):
        self.cmd = [shutil.which(exe) or exe, "--interval", str(int(interval_ms))]
        self.samples: list[dict] = []
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available(exe: str = "tegrastats") -> bool:
        return shutil.which(exe) is not None

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            parsed = parse_line(line)
            if parsed:
                self.samples.append(parsed)

    def __enter__(self) -> "TegrastatsSampler":
        try:
            self.proc = subprocess.Popen(
                self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
            )
        except OSError:
            self.proc = None
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._thread.join(timeout=5)

    def summary(self) -> dict | None:
        return summarize(self.samples)


def _int(v: str | None) -> int | None:
    return None if v is None else int(v)
