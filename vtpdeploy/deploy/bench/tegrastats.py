"""Jetson `tegrastats`: parse its lines, sample it during the timed window, derive power, energy and memory.

Line formats handled (sources are quoted in tests/test_tegrastats.py):
- GPU: `GR3D_FREQ 10%` (JetPack 4/5), `GR3D_FREQ 10%@1300`, a second cluster `GR3D2_FREQ 0%@0` (Orin,
  JetPack 5), `GR3D_FREQ 0%@[1300,1300]` (Orin, JetPack 6/7: one frequency per GPC) and
  `GR3D_FREQ @[1574,1574,1574]` (Thor: frequencies only, no load).
- CPU: `CPU [12%@1420,off,...]` and Thor's `CPU [0%,5%,off]@2601` (one shared frequency).
- Rails: `VDD_IN 5139mW/5139mW` (current/average), JetPack 7 `VIN 124486mW/36487mW/124486mW`
  (current/average/max) and the unit-less JetPack 4 forms `POM_5V_IN 3000/2900`, `GPU 463/463`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_GR3D = re.compile(r"\b(GR3D\d*_FREQ) (?:(\d+)%)?(?:@\[([^\]]*)\]|@(\d+))?")
_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?")
# NAME cur[mW]/avg[mW][/max[mW]] not followed by a unit or another number: RAM 4722/7844MB never matches.
_RAIL = re.compile(r"(?<![\w@])([A-Z][A-Z0-9_]*) (\d+)(mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?(?![\w/.])")
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "NC"}  # NC = "not connected" channels on Orin carrier boards
# Whole-board input rails, best first: Orin NX/Nano and Xavier NX `VDD_IN`, Thor `VIN`, JetPack 4 `POM_5V_IN`.
INPUT_RAILS = ("VDD_IN", "VIN", "POM_5V_IN")
# AGX Orin reports no input rail: its module power is the sum of these three.
AGX_ORIN_RAILS = ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")


def parse_line(line: str) -> dict | None:
    """One tegrastats line -> {ram/swap MB, gpu_load_pct, gpu_freq_mhz, gpu clusters, cpu, rails}.

    Returns None for lines that carry neither RAM nor GPU nor rail data.
    """
    out: dict = {
        "ram_used_mb": None, "ram_total_mb": None, "swap_used_mb": None, "swap_total_mb": None,
        "gpu_load_pct": None, "gpu_freq_mhz": None, "gpu": {}, "cpu": [], "rails": {},
    }
    if m := _RAM.search(line):
        out["ram_used_mb"], out["ram_total_mb"] = int(m.group(1)), int(m.group(2))
    if m := _SWAP.search(line):
        out["swap_used_mb"], out["swap_total_mb"] = int(m.group(1)), int(m.group(2))
    for m in _GR3D.finditer(line):
        load = _int(m.group(2))
        freqs = _freqs(m.group(3)) if m.group(3) is not None else ([int(m.group(4))] if m.group(4) else [])
        if load is None and not freqs:
            continue
        out["gpu"][m.group(1)] = {"load_pct": load, "freq_mhz": freqs}
    loads = [c["load_pct"] for c in out["gpu"].values() if c["load_pct"] is not None]
    freqs = [f for c in out["gpu"].values() for f in c["freq_mhz"] if f is not None]
    out["gpu_load_pct"] = max(loads) if loads else None
    out["gpu_freq_mhz"] = max(freqs) if freqs else None  # clusters idle at 0 MHz; the busiest one is the clock
    if m := _CPU.search(line):
        shared = _int(m.group(2))
        for core in m.group(1).split(","):
            cm = re.fullmatch(r"(\d+)%(?:@(\d+))?", core.strip())
            out["cpu"].append(None if not cm else {"load_pct": int(cm.group(1)),
                                                    "freq_mhz": _int(cm.group(2)) or shared})
    for m in _RAIL.finditer(line):
        name = m.group(1)
        if name in _NOT_RAILS or name in out["rails"] or (m.group(3) is None and not _unitless_rail(name)):
            continue
        rail = {"current_mw": int(m.group(2)), "avg_mw": int(m.group(4))}
        if m.group(5):
            rail["max_mw"] = int(m.group(5))
        out["rails"][name] = rail
    if out["ram_used_mb"] is None and not out["gpu"] and not out["rails"]:
        return None
    return out


def _unitless_rail(name: str) -> bool:
    """JetPack 4 printed rails without `mW`: POM_*/VDD_*/VIN_* and AGX Xavier's short names."""
    return name.startswith(("POM_", "VDD_", "VIN")) or name in {"GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"}


def _freqs(text: str) -> list[int | None]:
    return [int(f) if f.strip().isdigit() else None for f in text.split(",") if f.strip()]


def _int(v: str | None) -> int | None:
    return None if v is None else int(v)


def input_power(rails: dict[str, list[int]]) -> dict | None:
    """The board-input power of a window from per-sample `current_mw` lists: which rail(s), mean mW."""
    for name in INPUT_RAILS:
        if rails.get(name):
            return {"rails": [name], "avg_mw": round(_mean(rails[name]), 1), "method": f"mean of {name} current over the window"}
    if all(rails.get(n) for n in AGX_ORIN_RAILS):
        n = min(len(rails[r]) for r in AGX_ORIN_RAILS)
        total = [sum(rails[r][i] for r in AGX_ORIN_RAILS) for i in range(n)]
        return {"rails": list(AGX_ORIN_RAILS), "avg_mw": round(_mean(total), 1),
                "method": "mean of VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 current (AGX Orin has no input rail)"}
    return None


def summarize(samples: list[dict]) -> dict | None:
    """Aggregate parsed samples: RAM first/min/max/delta, GPU load and clocks, CPU load, per-rail and input power."""
    samples = [s for s in samples if s]
    if not samples:
        return None
    ram = [s["ram_used_mb"] for s in samples if s["ram_used_mb"] is not None]
    swap = [s["swap_used_mb"] for s in samples if s.get("swap_used_mb") is not None]
    load = [s["gpu_load_pct"] for s in samples if s["gpu_load_pct"] is not None]
    freq = [s["gpu_freq_mhz"] for s in samples if s["gpu_freq_mhz"] is not None]
    cpu = [c["load_pct"] for s in samples for c in s["cpu"] if c]
    currents: dict[str, list[int]] = {}
    rails: dict[str, dict] = {}
    for s in samples:
        for name, r in s["rails"].items():
            currents.setdefault(name, []).append(r["current_mw"])
    for name, cur in sorted(currents.items()):
        rails[name] = {"current_mw": cur[-1], "avg_mw": round(_mean(cur), 1), "max_mw": max(cur)}
    clusters = sorted({n for s in samples for n in s.get("gpu", {})})
    return {
        "samples": len(samples),
        "ram_used_first_mb": ram[0] if ram else None,
        "ram_used_min_mb": min(ram) if ram else None,
        "ram_used_max_mb": max(ram) if ram else None,
        "ram_delta_mb": (max(ram) - ram[0]) if ram else None,
        "ram_total_mb": next((s["ram_total_mb"] for s in samples if s["ram_total_mb"]), None),
        "swap_used_max_mb": max(swap) if swap else None,
        "gpu_load_mean_pct": round(_mean(load), 1) if load else None,
        "gpu_freq_mhz": freq[-1] if freq else None,
        "gpu_freq_max_mhz": max(freq) if freq else None,
        "gpu_clusters": clusters,
        "cpu_load_mean_pct": round(_mean(cpu), 1) if cpu else None,
        "rails": rails,
        "input_power": input_power(currents),
    }


def _mean(v: list) -> float:
    return sum(v) / len(v)


def energy_per_inference(power: dict | None, latency_mean_ms: float, batch: int) -> dict | None:
    """mJ per image = input power (mW) x mean batch latency (s) / batch."""
    if not power or not latency_mean_ms or batch < 1:
        return None
    return {"mj_per_inference": round(power["avg_mw"] * latency_mean_ms / 1000.0 / batch, 4),
            "avg_input_mw": power["avg_mw"], "rails": power["rails"],
            "method": f"{power['method']} x mean batch latency / batch; the window is shared by every model "
                      "of the interleaved run, so power is not split per model"}


def unified_memory(summary: dict | None, rss: dict, file_mb: float | None) -> dict:
    """Jetson memory of the timed window: process RSS delta, tegrastats RAM delta, engine/weights file size."""
    return {
        "method": "unified memory: process RSS (VmRSS) at the start and peak of the timed window; tegrastats "
                  "RAM used (whole board, all processes) max minus first sample; plus the engine/weights file size",
        "rss_start_mb": rss.get("start_mb"), "rss_peak_mb": rss.get("peak_mb"), "rss_delta_mb": rss.get("delta_mb"),
        "tegrastats_ram_first_mb": (summary or {}).get("ram_used_first_mb"),
        "tegrastats_ram_max_mb": (summary or {}).get("ram_used_max_mb"),
        "tegrastats_ram_delta_mb": (summary or {}).get("ram_delta_mb"),
        "file_mb": file_mb,
    }


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


class TegrastatsSampler:
    """Runs `tegrastats --interval MS` in a background process while the block is active.

    Samples carry a perf_counter timestamp so the report can keep only the timed window
    (`mark_start()` / `mark_end()`); the process RSS of this process is read with each sample.
    """

    def __init__(self, interval_ms: int = 100, exe: str = "tegrastats"):
        self.exe = exe
        self.path = shutil.which(exe)
        self.cmd = [self.path or exe, "--interval", str(int(interval_ms))]
        self.samples: list[tuple[float, dict]] = []
        self.proc: subprocess.Popen | None = None
        self.error: str | None = None if self.path else f"{exe} not found on PATH"
        self._window: list[float | None] = [None, None]
        self._rss: list[float] = []

    @staticmethod
    def available(exe: str = "tegrastats") -> bool:
        return shutil.which(exe) is not None

    def _read(self) -> None:
        from .memory import rss_mb

        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            parsed = parse_line(line)
            if parsed:
                self.samples.append((time.perf_counter(), parsed))
            rss = rss_mb()
            if rss is not None and self._window[0] is not None and self._window[1] is None:
                self._rss.append(rss)

    def __enter__(self) -> "TegrastatsSampler":
        if self.path is None:
            return self
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                         bufsize=1, stdin=subprocess.DEVNULL)
        except OSError as exc:
            self.proc, self.error = None, f"{self.exe} could not start ({exc.strerror or exc})"
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def mark_start(self) -> None:
        from .memory import rss_mb

        self._window[0] = time.perf_counter()
        rss = rss_mb()
        self._rss = [rss] if rss is not None else []

    def mark_end(self) -> None:
        from .memory import rss_mb

        self._window[1] = time.perf_counter()
        rss = rss_mb()
        if rss is not None:
            self._rss.append(rss)

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

    def window_samples(self) -> list[dict]:
        """Samples inside the timed window; all samples when the window caught none (runs shorter than one interval)."""
        t0, t1 = self._window
        inside = [s for t, s in self.samples if (t0 is None or t >= t0) and (t1 is None or t <= t1)]
        return inside or [s for _, s in self.samples]

    def rss(self) -> dict:
        if not self._rss:
            return {}
        start, peak = self._rss[0], max(self._rss)
        return {"start_mb": round(start, 3), "peak_mb": round(peak, 3), "delta_mb": round(max(0.0, peak - start), 3)}

    def summary(self) -> dict | None:
        return summarize(self.window_samples())

    def status(self) -> dict:
        """What the report records about tegrastats itself (also when it is missing)."""
        return {"available": self.proc is not None, "path": self.path, "interval_ms": int(self.cmd[2]),
                "error": self.error, "samples_total": len(self.samples),
                "window_s": round(self._window[1] - self._window[0], 4) if None not in self._window else None}
