"""`bench --host USER@HOST`: copy the artifacts over SSH, run `vtpdeploy bench ... --json` there,
bring the report back.

Every ssh/scp call is an argument list (no local shell). The remote command line is built from
tokens each quoted with shlex.quote. Host keys are checked against known_hosts
(StrictHostKeyChecking=yes, never auto-accepted; UserKnownHostsFile via --known-hosts or
$VTPDEPLOY_KNOWN_HOSTS) and BatchMode=yes, so nothing ever prompts.

Nothing can hang: every connection has ConnectTimeout and ServerAlive keep-alives (a dropped link
ends ssh after about ServerAliveInterval x ServerAliveCountMax seconds), the remote bench runs under
`setsid` in its own process group whose id is written to the remote dir, and on --timeout, Ctrl-C
or a dropped link that group is killed (TERM, then KILL) over a fresh connection *before* the
cleanup removes the remote dir. IPv6 hosts: `user@[::1]` (ssh gets `::1`, scp gets `[::1]:path`).
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

_HOST = re.compile(r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?:(?P<name>[A-Za-z0-9._-]+)|\[(?P<v6>[0-9A-Fa-f:.]+)\])$")
# Runs the bench as leader of a new process group and session, writes its PGID first, then becomes the bench.
_GROUP_SH = 'echo $$ > "$0" && exec "$@"'
# TERM the group, wait up to 5 s, then KILL; prints the PGID it signalled (nothing if none was recorded).
_KILL_SH = ('p=$(cat "$0" 2>/dev/null); [ -n "$p" ] || exit 0; echo "$p"; kill -s TERM -- "-$p" 2>/dev/null || exit 0; '
            'i=0; while kill -s 0 -- "-$p" 2>/dev/null && [ $i -lt 20 ]; do sleep 0.25; i=$((i+1)); done; '
            'kill -s KILL -- "-$p" 2>/dev/null; exit 0')


class RemoteError(VtpError):
    """SSH/scp failure or a failing remote bench (exit 2)."""


class Ssh:
    def __init__(self, host: str, port: int | None = None, known_hosts: str | Path | None = None,
                 identity: str | Path | None = None, connect_timeout: int = 10, alive_interval: int = 15,
                 alive_count: int = 3):
        m = _HOST.match(host)
        if not m or host.startswith("-") or (m["name"] or "").startswith("-"):
            raise VtpError(f"--host {host!r}: expected USER@HOST, HOST or USER@[IPV6]")
        user = f"{m['user']}@" if m["user"] else ""
        self.host = host
        self.target = user + (m["v6"] or m["name"])  # what ssh takes: no brackets around an IPv6 address
        self.scp_host = user + (f"[{m['v6']}]" if m["v6"] else m["name"])  # scp needs them before ":path"
        self.port = port
        known_hosts = known_hosts or os.environ.get("VTPDEPLOY_KNOWN_HOSTS")
        identity = identity or os.environ.get("VTPDEPLOY_SSH_KEY")
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={int(connect_timeout)}",
                "-o", f"ServerAliveInterval={int(alive_interval)}", "-o", f"ServerAliveCountMax={int(alive_count)}",
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

    def _ssh(self, tokens: list[str]) -> list[str]:
        return ["ssh", *self.opts, *(["-p", str(self.port)] if self.port else []), "--", self.target,
                " ".join(shlex.quote(t) for t in tokens)]

    def run(self, tokens: list[str], what: str, timeout: float | None = 120.0) -> str:
        cmd = self._ssh(tokens)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise VtpError("ssh is not installed (apt-get install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"ssh {self.where}: {what} timed out after {timeout:.0f}s") from None
        if res.returncode != 0:
            raise self._fail(what, res)
        return res.stdout

    def run_group(self, tokens: list[str], pgid_file: str, timeout: float | None) -> None:
        """Run `tokens` remotely as its own process group; on timeout, Ctrl-C or a lost link kill that group."""
        cmd = self._ssh(["setsid", "-w", "sh", "-c", _GROUP_SH, pgid_file, *tokens])
        try:  # own session locally too: Ctrl-C reaches us, and we decide the order (kill remote, then clean up)
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except FileNotFoundError:
            raise VtpError("ssh is not installed (apt-get install openssh-client)") from None
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pgid = self.kill_group(pgid_file)
            _stop(proc)
            raise RemoteError(f"remote bench on {self.where} timed out after {timeout:g}s; "
                              f"killed its process group {pgid or '(not started)'}") from None
        except BaseException:  # KeyboardInterrupt: the remote bench must not outlive us
            self.kill_group(pgid_file)
            _stop(proc)
            raise
        res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        if res.returncode == 255:  # lost link: the remote group may still run, orphaned
            self.kill_group(pgid_file)
        if res.returncode != 0:
            raise self._fail("remote bench", res)

    def kill_group(self, pgid_file: str) -> str | None:
        """TERM then KILL the process group recorded in `pgid_file`; returns the PGID, or None (best effort)."""
        try:
            out = self.run(["sh", "-c", _KILL_SH, pgid_file], "stopping the remote bench", timeout=30)
        except VtpError:
            return None
        return out.strip() or None

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
    dest = f"{ssh.scp_host}:{remote_dir}/"
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
    (--backend, --device, --batch, ...); artifacts and a path baseline are copied first.

    `timeout` bounds the remote bench itself (not the copies). ONNX files are shipped as they are,
    so the device builds its own engine from them with the precision the ONNX carries (Q/DQ -> int8,
    fp16 -> fp16; an explicit --precision travels in `bench_args`)."""
    if timeout is not None and timeout <= 0:
        raise VtpError(f"--timeout must be > 0 seconds, got {timeout:g}")
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
        ssh.run_group(tokens, f"{remote_dir}/bench.pgid", timeout)
        with tempfile.TemporaryDirectory(prefix="vtpbench-") as tmp:
            local = Path(tmp) / "report.json"
            ssh.scp([f"{ssh.scp_host}:{remote_dir}/report.json"], str(local), "fetching the report")
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


def _stop(proc: subprocess.Popen) -> None:
    """End the local ssh client (its remote side is already handled)."""
    proc.kill()
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        pass
