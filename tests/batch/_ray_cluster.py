"""A real single-node Ray cluster on 127.0.0.1 for the tests: ``ray start --head --block``.

Started in a subprocess with its own temp folder and free ports (so it never joins or disturbs
another cluster on the machine), stopped by signalling that process (never ``ray stop``, which
stops every cluster of the user), with bounded waits.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """A free port from the kernel's ephemeral range (32768-60999 on Linux)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _pids_using(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (our unique temp folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


class RayCluster:
    def __init__(self, num_cpus: int = 2, env: dict | None = None, timeout: float = 90.0):
        self.temp_dir = tempfile.mkdtemp(prefix="rdd", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        ray_bin = str(Path(sys.executable).with_name("ray"))
        ports = {
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--ray-client-server-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--metrics-export-port": free_port(),
            "--runtime-env-agent-port": free_port(),
        }
        # Worker ports come from a block below the ephemeral range, so that no port picked by
        # free_port() (for this or another component) can fall inside it.
        low = 20000 + (os.getpid() % 120) * 100  # above Ray's default 10002-19999
        assert low + 99 < _ephemeral_low(), "worker port block overlaps the ephemeral range"
        cmd = [
            ray_bin,
            "start",
            "--head",
            "--block",
            "--port",
            str(self.port),
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(num_cpus),
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            "--temp-dir",
            self.temp_dir,
            "--min-worker-port",
            str(low),
            "--max-worker-port",
            str(low + 99),
        ]
        for k, v in ports.items():
            cmd += [k, str(v)]
        full_env = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0"}
        self.log = open(Path(self.temp_dir) / "ray-start.log", "wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.read_log()[-2000:]}")
            if b"Ray runtime started" in (Path(self.temp_dir) / "ray-start.log").read_bytes():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ray start did not come up in {timeout} s: {self.read_log()[-2000:]}")

    def read_log(self) -> str:
        return (Path(self.temp_dir) / "ray-start.log").read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> list[int]:
        """Stop the cluster; returns the pids that had to be killed afterwards (should be [])."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        left = _pids_using(self.temp_dir)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = _pids_using(self.temp_dir)
        for pid in left:  # our own leftovers only: their command line names our temp folder
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        if not _pids_using(self.temp_dir):
            shutil.rmtree(self.temp_dir, ignore_errors=True)  # session logs and sockets
        return left
