"""`bench --host` for real, against an sshd on 127.0.0.1 that this test starts (tmp keys, tmp config)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import make_run_dir
from helpers import run_cli as _cli

SSHD = "/usr/sbin/sshd"

pytestmark = [
    pytest.mark.skipif(not Path(SSHD).exists(), reason="needs /usr/sbin/sshd (apt-get install -y openssh-server openssh-client)"),
    pytest.mark.skipif(shutil.which("ssh") is None or shutil.which("scp") is None or shutil.which("ssh-keygen") is None,
                       reason="needs ssh, scp and ssh-keygen (apt-get install -y openssh-client)"),
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the test sshd logs in as root; run as root"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    _keygen(d / "host_key")
    _keygen(d / "client_key")
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nUsePAM no\nStrictModes no\nPermitRootLogin yes\nPasswordAuthentication no\n"
        f"PubkeyAuthentication yes\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir sshd insists on
    proc = subprocess.Popen([SSHD, "-D", "-f", str(d / "sshd_config"), "-e"], stdout=subprocess.DEVNULL,
                            stderr=open(d / "sshd.log", "w"))
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.skip(f"sshd did not start: {(d / 'sshd.log').read_text()[-300:]}")
            time.sleep(0.1)
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    _keygen(d / "other_host_key")
    other = (d / "other_host_key.pub").read_text().split()
    (d / "wrong_known_hosts").write_text(f"[127.0.0.1]:{port} {other[0]} {other[1]}\n")
    (d / "empty_known_hosts").write_text("")
    yield {"dir": d, "port": port}
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


def _remote_args(sshd, known="known_hosts"):
    d = sshd["dir"]
    return ["--host", "root@127.0.0.1", "--port", sshd["port"], "--known-hosts", d / known,
            "--identity", d / "client_key", "--remote-cmd", f"{sys.executable} -m vtpdeploy"]


def test_remote_bench_roundtrip(sshd, tmp_path):
    run = make_run_dir(tmp_path)
    out = tmp_path / "remote.json"
    res = _cli("bench", run, *_remote_args(sshd), "--backend", "ort", "--batch", "1", "--warmup-s", "0",
               "--iters", "10", "--threads", "1", "--json", out, "--md", tmp_path / "r.md")
    assert res.returncode == 0, res.stderr
    rep = json.loads(out.read_text())
    assert rep["schema_version"] == 1 and len(rep["results"]) == 2 and len(rep["comparison"]) == 1
    assert rep["settings"]["remote"]["host"] == "root@127.0.0.1"
    assert {r["role"] for r in rep["results"]} == {"baseline", "candidate"}
    assert "speedup" in res.stdout  # the table is printed locally from the fetched report
    # the remote temp dir was cleaned up
    remote_dirs = list(Path(os.environ.get("TMPDIR", "/tmp")).glob("vtpbench.*"))
    assert not [p for p in remote_dirs if (p / "report.json").exists()]


@pytest.mark.parametrize("known", ["wrong_known_hosts", "empty_known_hosts"])
def test_unknown_host_key_refused(sshd, tmp_path, known):
    run = make_run_dir(tmp_path)
    res = _cli("bench", run, *_remote_args(sshd, known), "--backend", "ort", "--iters", "2")
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "Host key verification failed" in lines[0] or "host key" in lines[0].lower()


def test_unreachable_host(sshd, tmp_path):
    run = make_run_dir(tmp_path)
    args = _remote_args(sshd)
    args[3] = _free_port()  # nothing listens there
    res = _cli("bench", run, *args, "--backend", "ort", "--iters", "2")
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr and "refused" in lines[0].lower()


def _pgrep(pattern: str) -> list[str]:
    res = subprocess.run(["pgrep", "-f", "-a", pattern], capture_output=True, text=True)
    return [ln for ln in res.stdout.splitlines() if "pgrep" not in ln]


def test_remote_timeout_kills_the_remote_process_group(sshd, tmp_path):
    """A remote bench that outlives --timeout is killed with its children before cleanup; one line, exit 2."""
    import uuid

    marker = f"vtp-hang-{uuid.uuid4().hex[:8]}"
    art = tmp_path / "m.onnx"
    art.write_bytes(b"not read: the stand-in remote command never opens it")
    d = sshd["dir"]
    # the stand-in "vtpdeploy": a shell named by the marker that waits on a child sleep (same process group)
    remote_cmd = f"sh -c 'sleep 4321.{os.getpid()} & wait' {marker}"
    t0 = time.monotonic()
    res = _cli("bench", art, "--host", "root@127.0.0.1", "--port", sshd["port"], "--known-hosts", d / "known_hosts",
               "--identity", d / "client_key", "--remote-cmd", remote_cmd, "--backend", "ort", "--iters", "2",
               "--timeout", "3", timeout=120)
    elapsed = time.monotonic() - t0
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "timed out after 3s; killed its process group" in lines[0] and lines[0].rstrip().split()[-1].isdigit()
    assert elapsed < 60
    time.sleep(0.5)
    assert _pgrep(marker) == [] and _pgrep(f"sleep 4321.{os.getpid()}") == []
    pgid = lines[0].rstrip().split()[-1]
    leftovers = [p for p in Path("/tmp").glob("vtpbench.*") if (p / "bench.pgid").is_file()
                 and (p / "bench.pgid").read_text().strip() == pgid]
    assert leftovers == []  # cleanup ran after the kill


def test_ssh_options_and_ipv6_targets(tmp_path):
    from vtpdeploy.deploy.bench.remote import Ssh
    from vtpdeploy.errors import VtpError

    ssh = Ssh("root@[::1]", port=2222)
    assert (ssh.target, ssh.scp_host) == ("root@::1", "root@[::1]")
    opts = " ".join(ssh.opts)
    assert "ServerAliveInterval=15" in opts and "ServerAliveCountMax=3" in opts and "ConnectTimeout=10" in opts
    assert (Ssh("jetson.local").target, Ssh("jetson.local").scp_host) == ("jetson.local", "jetson.local")
    for bad in ("-oProxyCommand=x", "user@-x", "[::1", "user@[fe80::1%eth0]"):
        with pytest.raises(VtpError):
            Ssh(bad)
