"""Real container clients run privately for end-to-end tests: containerd (+ ctr), podman and
dockerd, each with its own root, state and socket under a temp dir, so nothing on the
machine is touched and nothing leaves it.

Every mirror configuration points the client's real upstream (``server`` / ``location``) at
a dead loopback port; dockerd, whose fallback is always Docker Hub, runs in a private mount
namespace whose /etc/hosts sends Docker Hub's names to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .binaries import require
from .ports import wait_until

DEAD = "127.0.0.1:9"   # discard port: nothing listens; a fallback there fails at once
DOCKER_HUB_NAMES = ("registry-1.docker.io", "index.docker.io", "auth.docker.io",
                    "production.cloudflare.docker.com", "registry.docker.io")


def unprivileged(daemon: str, log: Path) -> None:
    """Skip (the only skip for a daemon that would not start): not root. containerd and
    dockerd mount their snapshots; CI runs ``make test`` as root."""
    if os.geteuid() != 0:
        pytest.skip(f"{daemon} needs root to mount its snapshots (CI runs make test as root):"
                    f"\n{tail(log)}")


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() \
        else ""


def _stop(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Containerd:
    workdir: Path
    proc: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd.sock"

    def start(self) -> "Containerd":
        require("containerd")
        require("ctr")
        cfg = self.workdir / "config.toml"
        cfg.write_text(f"""version = 2
root = "{self.workdir}/root"
state = "{self.workdir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
""")
        log = self.workdir / "containerd.log"
        self.proc = subprocess.Popen(["containerd", "--config", str(cfg)],
                                     stdout=log.open("ab"), stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self.proc.poll() is not None or self._ready(), 30,
                       "containerd to serve")
        except TimeoutError:
            self.stop()
            pytest.fail(f"containerd did not serve within 30 s:\n{tail(log)}")
        if self.proc.poll() is not None:
            unprivileged("containerd", log)
            pytest.fail(f"containerd exited at start:\n{tail(log)}")
        return self

    def _ready(self) -> bool:
        return self.socket.exists() and subprocess.run(
            ["ctr", "--address", str(self.socket), "version"], capture_output=True,
            timeout=10).returncode == 0

    def ctr(self, *args: str, check: bool = True, timeout: float = 180) -> str:
        proc = self.attempt(*args, timeout=timeout)
        if check:
            assert proc.returncode == 0, f"ctr {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout + proc.stderr

    def attempt(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """Run ctr; the caller judges the outcome (its status and output)."""
        return subprocess.run(["ctr", "--address", str(self.socket), "-n", "pullcache-e2e",
                               *args], capture_output=True, text=True, timeout=timeout)

    def hosts_dir(self, name: str, mirror: str, *, registry: str = "_default") -> Path:
        """A ``--hosts-dir`` whose ``registry`` entry mirrors through ``mirror`` only."""
        base = self.workdir / name
        (base / registry).mkdir(parents=True, exist_ok=True)
        (base / registry / "hosts.toml").write_text(
            f'server = "http://{DEAD}"\n\n[host."http://{mirror}"]\n'
            f'  capabilities = ["pull", "resolve"]\n')
        return base

    def image_digest(self, ref: str) -> str:
        for line in self.ctr("images", "ls").splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == ref:
                return cols[2]
        raise AssertionError(f"{ref} not in ctr images ls")

    def stop(self) -> None:
        _stop(self.proc)


@dataclass
class Podman:
    workdir: Path

    def __post_init__(self) -> None:
        require("podman")
        # podman refuses a runroot path longer than 50 characters.
        self.runroot = Path(tempfile.mkdtemp(prefix="pc-podman-", dir="/tmp"))

    def cleanup(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)

    def registries_conf(self, mirrors: dict[str, str]) -> Path:
        """``prefix → mirror location`` (a location may carry a path: ``host/ghcr.io``)."""
        lines = ["unqualified-search-registries = []"]
        for prefix, location in mirrors.items():
            lines += ["", "[[registry]]", f'prefix = "{prefix}"', f'location = "{DEAD}"',
                      "insecure = true", "[[registry.mirror]]", f'location = "{location}"',
                      "insecure = true"]
        path = self.workdir / "registries.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def run(self, conf: Path, *args: str, timeout: float = 180) -> str:
        proc = self.attempt(conf, *args, timeout=timeout)
        assert proc.returncode == 0, f"podman {' '.join(args)}:\n{proc.stderr}"
        return proc.stdout

    def attempt(self, conf: Path, *args: str, timeout: float = 180,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run podman; the caller judges the outcome (skips if podman cannot run here)."""
        proc = subprocess.run(
            ["podman", "--root", str(self.workdir / "root"), "--runroot",
             str(self.runroot), "--storage-driver", "vfs", "--cgroup-manager",
             "cgroupfs", "--events-backend", "file", *args],
            capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf), **(env or {})})
        if proc.returncode != 0 and os.geteuid() != 0:
            pytest.skip("podman with a private --root and the vfs driver needs root here "
                        f"(CI runs make test as root): {proc.stderr[-500:]}")
        return proc


@dataclass
class Dockerd:
    workdir: Path
    mirror: str
    containerd: Containerd
    proc: subprocess.Popen | None = None
    scheme: str = "http"
    # Mounted over /etc/docker in dockerd's namespace: certs.d/<host:port>/ca.crt, client.*
    etc_docker: Path | None = None
    env: dict = field(default_factory=dict)   # for the docker CLI (DOCKER_CONFIG=…)
    # A daemon.json written by someone else (pullcache node-setup); the mirror is then named
    # there, not on the command line (dockerd refuses a setting given both ways).
    config_file: Path | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "docker.sock"

    def start(self) -> "Dockerd":
        require("dockerd")
        require("docker")
        require("unshare")
        hosts = self.workdir / "hosts"
        hosts.write_text("127.0.0.1 localhost\n" + "".join(
            f"127.0.0.1 {name}\n" for name in DOCKER_HUB_NAMES))
        config_file = self.config_file or self.workdir / "daemon.json"
        if self.config_file is None:
            config_file.write_text(json.dumps({}))
        etc = f"mount --bind {self.etc_docker} /etc/docker || exit 91\n" if self.etc_docker \
            else ""
        insecure = f"--insecure-registry {self.mirror} " \
            if self.scheme == "http" and self.config_file is None else ""
        mirror = f"--registry-mirror {self.scheme}://{self.mirror} " \
            if self.config_file is None else ""
        script = self.workdir / "start.sh"
        script.write_text(f"""#!/bin/sh
# Private mount namespace: Docker Hub's names resolve to 127.0.0.1 for this dockerd only.
mount --bind {hosts} /etc/hosts || exit 90
{etc}exec dockerd --data-root {self.workdir}/data --exec-root {self.workdir}/exec \\
  --pidfile {self.workdir}/docker.pid -H unix://{self.socket} \\
  --bridge=none --iptables=false --ip-masq=false --storage-driver=vfs \\
  {mirror}{insecure}\\
  --containerd {self.containerd.socket} --config-file {config_file}
""")
        script.chmod(0o755)
        log = self.workdir / "dockerd.log"
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                      str(script)], stdout=log.open("ab"),
                                     stderr=subprocess.STDOUT)
        def up() -> bool:
            if (code := self.proc.poll()) is not None:
                if code in (90, 91):
                    pytest.skip("the kernel refused a bind mount in a private mount namespace "
                                "(no CAP_SYS_ADMIN: an unprivileged container), which keeps "
                                f"dockerd's Docker Hub fallback on 127.0.0.1:\n{tail(log)}")
                unprivileged("dockerd", log)
                pytest.fail(f"dockerd exited at start (status {code}):\n{tail(log)}")
            return self.socket.exists() and self.docker("version", check=False)[0] == 0
        try:
            wait_until(up, 60, "dockerd answering")
        except TimeoutError:
            self.stop()
            pytest.fail(f"dockerd did not answer within 60 s:\n{tail(log)}")
        return self

    def docker(self, *args: str, check: bool = True, timeout: float = 180) -> tuple[int, str]:
        proc = subprocess.run(["docker", "-H", f"unix://{self.socket}", *args],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env} if self.env else None)
        if check:
            assert proc.returncode == 0, f"docker {' '.join(args)}:\n{proc.stderr}"
        return proc.returncode, proc.stdout + proc.stderr

    def stop(self) -> None:
        _stop(self.proc, timeout=30)
