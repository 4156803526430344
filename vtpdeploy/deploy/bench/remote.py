"""`bench --host USER@HOST`: copy the artifacts over SSH, run `vtpdeploy bench ... --json` there,
bring the report back.

Every ssh/scp call is an argument list (no local shell). The remote command line is built from
tokens each quoted with shlex.quote. Host keys are checked against known_hosts
(StrictHostKeyChecking=yes, never auto-accepted; UserKnownHostsFile via --known-hosts or
$VTPDEPLOY_KNOWN_HOSTS) and BatchMode=yes, so nothing ever prompts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path

from ...errors import VtpError
from .report import check_report

_HOST = re.compile(r"^(?:[A-Za-z0-9._-]+@)?(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])$")


class RemoteError(VtpError):
    """SSH/scp failure or a failing remote bench (exit 2)."""


class Ssh:
    def __init__(self, host: str, port: int | None = None, known_hosts: str | Path | None = None,
                 identity: str | Path | None = None, connect_timeout: int = 10):
        if not _HOST.match(host) or host.startswith("-"):
            raise VtpError(f"--host {host!r}: expected USER@HOST or HOST")
        self.host = host
        self.port = port
        known_hosts = known_hosts or os.environ.get("VTPDEPLOY_KNOWN_HOSTS")
        identity = identity or os.environ.get("VTPDEPLOY_SSH_KEY")
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={int(connect_timeout)}",
                "-o", "LogLevel=ERROR"]
        if known_hosts:
            if not Path(known_hosts).is_file():
                raise VtpError(f"--known-hosts {known_hosts}: no such file")
            opts += ["-o", f"UserKnownHostsFile={Path(known_hosts).resolve()}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if identity:
            if not Path(identity).is_file():
                raise VtpError(f"--identity {identity}: no such file")
            opts += ["-i", str(Path(identity).resolve()), "-o", "IdentitiesOnly=yes"]
        self.opts = opts

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host

    def _fail(self, what: str, res: subprocess.CompletedProcess) -> RemoteError:
        lines = [ln.strip() for ln in (res.stderr or "").splitlines() if ln.strip()]
        errs = [ln for ln in lines if ln.startswith("error:")]
        last = (errs or lines or [f"exit status {res.returncode}"])[-1]
        if res.returncode == 255 or what != "remote bench":
            return RemoteError(f"ssh {self.where}: {what} failed: {last}")
        return RemoteError(f"remote bench on {self.where} failed: {last.removeprefix('error: ')}")

    def run(self, tokens: list[str], what: str, timeout: float | None = None) -> str:
        cmd = ["ssh", *self.opts, *(["-p", str(self.port)] if self.port else []), "--", self.host,
               " ".join(shlex.quote(t) for t in tokens)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise VtpError("ssh is not installed (apt-get install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"ssh {self.where}: {what} timed out after {timeout:.0f}s") from None
        if res.returncode != 0:
            raise self._fail(what, res)
        return res.stdout

    def scp(self, sources: list[str], dest: str, what: str, recursive: bool = False) -> None:
        cmd = ["scp", "-q", *(["-r"] if recursive else []), *self.opts, *(["-P", str(self.port)] if self.port else []),
               "--", *sources, dest]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise VtpError("scp is not installed (apt-get install openssh-client)") from None
        if res.returncode != 0:
            raise self._fail(what, res)


def _ship(ssh: Ssh, spec: str, remote_dir: str, name: str) -> str:
    """Copy one local artifact to remote_dir under a name we choose; returns the remote path to pass."""
    from ..sources import is_run_dir, saved_base

    path = Path(spec)
    dest = f"{ssh.host}:{remote_dir}/"
    if is_run_dir(path):
        files = [p for p in sorted(path.iterdir()) if p.is_file()]  # not bench_cache/ or other subfolders
        ssh.run(["mkdir", "-p", f"{remote_dir}/{name}"], "mkdir")
        ssh.scp([str(p) for p in files], f"{dest}{name}/", f"copying {path}")
        return f"{remote_dir}/{name}"
    base = saved_base(path)
    if base is not None:
        ssh.run(["mkdir", "-p", f"{remote_dir}/{name}"], "mkdir")
        ssh.scp([str(base.with_name(base.name + s)) for s in (".safetensors", ".json")], f"{dest}{name}/", f"copying {base}")
        return f"{remote_dir}/{name}/{base.name}"
    if path.is_file():
        # keep the file name: an ONNX file may reference external data next to it by name
        extra = [p for p in (Path(str(path) + ".data"),) if p.is_file()]
        ssh.run(["mkdir", "-p", f"{remote_dir}/{name}"], "mkdir")
        ssh.scp([str(path), *map(str, extra)], f"{dest}{name}/", f"copying {path}")
        return f"{remote_dir}/{name}/{path.name}"
    raise VtpError(f"{path}: no such artifact (run dir, saved model, .onnx or .engine)")


def run_remote(host: str, artifacts: list[str], bench_args: list[str], *, baseline: str | None = None,
               port: int | None = None, remote_cmd: str = "python3 -m vtpdeploy", known_hosts=None,
               identity=None, keep: bool = False, timeout: float | None = None) -> dict:
    """Run the bench on `host` and return its report. `bench_args` are extra CLI tokens
    (--backend, --device, --batch, ...); artifacts and a path baseline are copied first."""
    ssh = Ssh(host, port, known_hosts, identity)
    for a in artifacts:
        if not Path(a).exists():
            raise VtpError(f"{a}: no such artifact (run dir, saved model, .onnx or .engine)")
    prefix = shlex.split(remote_cmd)
    if not prefix:
        raise VtpError("--remote-cmd is empty")
    remote_dir = ssh.run(["mktemp", "-d", "-t", "vtpbench.XXXXXX"], "connecting").strip().splitlines()[-1]
    if not remote_dir.startswith("/") or any(c in remote_dir for c in "\n\r\0"):
        raise RemoteError(f"ssh {ssh.where}: unexpected mktemp output {remote_dir!r}")
    try:
        remote_arts = [_ship(ssh, a, remote_dir, f"a{i}") for i, a in enumerate(artifacts)]
        tokens = [*prefix, "bench", *remote_arts, *bench_args, "--json", f"{remote_dir}/report.json"]
        if baseline is not None:
            tokens += ["--baseline", _ship(ssh, baseline, remote_dir, "baseline") if Path(baseline).exists() else baseline]
        ssh.run(tokens, "remote bench", timeout=timeout)
        with tempfile.TemporaryDirectory(prefix="vtpbench-") as tmp:
            local = Path(tmp) / "report.json"
            ssh.scp([f"{ssh.host}:{remote_dir}/report.json"], str(local), "fetching the report")
            try:
                report = json.loads(local.read_text())
            except ValueError as exc:
                raise RemoteError(f"ssh {ssh.where}: remote report is not JSON ({exc})") from None
    finally:
        if not keep:
            try:
                ssh.run(["rm", "-rf", "--", remote_dir], "cleanup")
            except VtpError:
                pass
    check_report(report, f"report from {ssh.where}")
    report.setdefault("settings", {})["remote"] = {"host": host, "port": port, "remote_cmd": remote_cmd,
                                                   "artifacts": {r: a for r, a in zip(remote_arts, artifacts)}}
    return report
