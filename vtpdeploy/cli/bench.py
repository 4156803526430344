"""`vtpdeploy bench`: interleaved candidate-vs-baseline benchmark (see docs/bench.md)."""

from __future__ import annotations

from pathlib import Path

import typer


def bench(
    artifacts: list[str] = typer.Argument(..., help="Run dir, saved model, .onnx or TensorRT engine (one or more)."),
    backend: str = typer.Option("auto", "--backend", help="torch | ort | openvino | trt | auto (comma list allowed)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | jetson"),
    host: str = typer.Option(None, "--host", help="USER@HOST: run the bench there over SSH."),
    port: int = typer.Option(None, "--port", help="SSH port for --host."),
    remote_cmd: str = typer.Option("python3 -m vtpdeploy", "--remote-cmd", help="How to invoke vtpdeploy on --host."),
    known_hosts: Path = typer.Option(None, "--known-hosts", help="known_hosts file for --host (env VTPDEPLOY_KNOWN_HOSTS)."),
    identity: Path = typer.Option(None, "--identity", help="SSH private key for --host (env VTPDEPLOY_SSH_KEY)."),
    timeout: float = typer.Option(None, "--timeout", help="With --host: seconds the remote bench may run; then its process group is killed (exit 2)."),
    tegrastats: bool = typer.Option(None, "--tegrastats/--no-tegrastats", help="Sample tegrastats (power, GPU clock, board RAM) during the timed window (default: on for --device jetson)."),
    batch: str = typer.Option("1", "--batch", help="Batch sizes, comma-separated, e.g. 1,8."),
    precision: str = typer.Option("auto", "--precision", help="auto | fp32 | fp16 | int8. TensorRT: engine precision (auto reads the ONNX: Q/DQ -> int8, fp16 -> fp16); torch on CUDA: fp32 | fp16."),
    baseline: str = typer.Option(None, "--baseline", help="unpruned | TIMM_NAME | PATH | none (default: the unpruned model of the run the ARTIFACT is, or was exported from; anything else must name one)."),
    warmup_s: float = typer.Option(1.0, "--warmup-s", help="Warm-up seconds per model."),
    duration_s: float = typer.Option(None, "--duration-s", help="Measured seconds per model per batch (default 3)."),
    iters: int = typer.Option(None, "--iters", help="Measured iterations per model per batch (instead of --duration-s)."),
    block: int = typer.Option(10, "--block", help="Iterations per interleaved block."),
    threads: int = typer.Option(None, "--threads", help="torch/ORT/OpenVINO threads (default: all cores)."),
    seed: int = typer.Option(0, "--seed", help="Seed for inputs and the bootstrap."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Where exported ONNX files are cached."),
    json_out: Path = typer.Option(None, "--json", help="Write the JSON report here."),
    md: Path = typer.Option(None, "--md", help="Write a Markdown table here."),
    plot: Path = typer.Option(None, "--plot", help="Write a PNG plot here."),
    gate: Path = typer.Option(None, "--gate", help="RULES.yaml: exit 1 when a gate fails."),
    junit: Path = typer.Option(None, "--junit", help="With --gate: write JUnit XML here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No terminal tables."),
) -> None:
    """Benchmark ARTIFACTs against a baseline, interleaved, with bootstrap speedup intervals."""
    from rich.console import Console

    from ..errors import VtpError

    if timeout is not None and not host:
        raise VtpError("--timeout bounds a remote bench: use it with --host")
    rules = None
    if gate is not None:
        from ..deploy.bench.rules import load_rules

        rules = load_rules(gate)  # malformed rules fail before the run
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    timing = dict(warmup_s=warmup_s, duration_s=duration_s, iters=iters, threads=threads, block_iters=block,
                  seed=seed, tegrastats=tegrastats, precision=precision)
    if host:
        report = _run_remote(host, artifacts, backend, device, batch, baseline, timing, port=port,
                             remote_cmd=remote_cmd, known_hosts=known_hosts, identity=identity, timeout=timeout)
    else:
        report = _run_local(artifacts, backend, device, batch, baseline, cache_dir, timing, console, quiet)
    _finish(report, json_out, md, plot, quiet, console)
    if rules is not None and not _gate_passes(report, rules, junit, console):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


def _run_local(artifacts: list[str], backend: str, device: str, batch: str, baseline: str | None,
               cache_dir: Path | None, timing: dict, console, quiet: bool) -> dict:
    from ..deploy.bench.run import run_bench

    def progress(msg: str) -> None:
        if not quiet:
            console.print(f"[dim]{msg}[/]")

    return run_bench(artifacts, backend=backend, device=device, batches=batch, baseline=baseline,
                     cache_dir=cache_dir, progress=progress, **timing)


def _finish(report: dict, json_out: Path | None, md: Path | None, plot: Path | None, quiet: bool, console) -> None:
    """Warnings, output files and (unless quiet) the terminal tables."""
    for w in report.get("warnings", []):
        typer.echo(f"warning: {w}", err=True)
    _write_outputs(report, json_out, md, plot)
    if not quiet:
        from ..deploy.bench.report import print_tables

        print_tables(report, console)


def _run_remote(host: str, artifacts: list[str], backend: str, device: str, batch: str, baseline: str | None,
                timing: dict, **ssh) -> dict:
    """The same bench on `host` over SSH; its settings are checked here, before any connection."""
    from ..deploy.bench.remote import run_remote
    from ..deploy.bench.settings import check_timing

    check_timing(batch, timing["duration_s"], timing["iters"], timing["warmup_s"], timing["block_iters"],
                 timing["threads"])
    args = ["--backend", backend, "--device", device, "--batch", batch, "--warmup-s", str(timing["warmup_s"]),
            "--block", str(timing["block_iters"]), "--seed", str(timing["seed"]), "--quiet"]
    for flag, key in (("--duration-s", "duration_s"), ("--iters", "iters"), ("--threads", "threads")):
        if timing[key] is not None:
            args += [flag, str(timing[key])]
    if timing["tegrastats"] is not None:
        args += ["--tegrastats" if timing["tegrastats"] else "--no-tegrastats"]
    if timing["precision"] != "auto":
        args += ["--precision", timing["precision"]]
    return run_remote(host, list(artifacts), args, baseline=baseline, **ssh)


def _write_outputs(report: dict, json_out: Path | None, md: Path | None, plot: Path | None) -> None:
    from ..deploy.bench.report import write_json, write_markdown

    if json_out:
        write_json(report, json_out)
    if md:
        write_markdown(report, md)
    if plot:
        from ..deploy.bench.plot import write_plot

        write_plot(report, plot)


def _gate_passes(report: dict, rules, junit: Path | None, console) -> bool:
    from ..deploy.bench.rules import evaluate, print_table, write_junit

    results = evaluate(report, rules)
    print_table(results, console)
    if junit:
        write_junit(results, junit)
    return all(r.passed for r in results)
