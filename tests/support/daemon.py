"""pullcache itself, run as a real subprocess (``python -m pullcache serve``).

A subprocess, not an in-process app: tests can SIGKILL it mid-fill, restart it on the same
cache dir, and real clients (skopeo, ctr) talk to it exactly as in production.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .ports import free_port, wait_http, wait_until

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class UpstreamSpec:
    host: str
    url: str
    username: str | None = None
    password: str | None = None
    default: bool = False
    extra: dict = field(default_factory=dict)


@dataclass
class Pullcache:
    workdir: Path
    upstreams: list[UpstreamSpec]
    cache: dict = field(default_factory=dict)
    backing: dict = field(default_factory=dict)   # [backing.<tier>] keys
    tier: str = "ecr"                             # which [backing.*] table they go in
    server: dict = field(default_factory=dict)    # more [server] keys (tls_cert, …)
    access: dict = field(default_factory=dict)    # [access] keys
    cluster: dict = field(default_factory=dict)   # [cluster] keys
    env: dict = field(default_factory=dict)
    port: int = 0
    admin_port: int = 0
    listen_host: str = "127.0.0.1"   # or "::1"
    proc: subprocess.Popen | None = None
    run_start: int = field(default=0, repr=False)   # the log's size at the last launch

    @property
    def url(self) -> str:
        scheme = "https" if self.server.get("tls_cert") else "http"
        return f"{scheme}://{self.host}"

    @property
    def admin_url(self) -> str:
        """The admin listener: /metrics, /healthz, /readyz, /admin/…"""
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def host(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.port}"

    @property
    def cache_dir(self) -> Path:
        return self.workdir / "cache"

    @property
    def log_path(self) -> Path:
        return self.workdir / "pullcache.log"

    def write_config(self) -> Path:
        self.port = self.port or free_port(self.listen_host)
        self.admin_port = self.admin_port or free_port()
        lines = ["[server]", f'listen = "{self.host}"',
                 f'admin_listen = "127.0.0.1:{self.admin_port}"']
        lines += [f"{k} = {_toml(v)}" for k, v in self.server.items()]
        if self.access:
            lines += ["", "[access]"] + [f"{k} = {_toml(v)}" for k, v in self.access.items()]
        lines += ["", "[cache]",
                 f'dir = "{self.cache_dir}"']
        cache = {"max_size": "4GiB", **self.cache}
        lines += [f"{k} = {_toml(v)}" for k, v in cache.items()]
        for up in self.upstreams:
            lines += ["", "[[upstream]]", f'host = "{up.host}"', f'url = "{up.url}"',
                      f"default = {_toml(up.default)}"]
            if up.username:
                lines += [f'username = "{up.username}"', f'password = "{up.password}"']
            lines += [f"{k} = {_toml(v)}" for k, v in up.extra.items()]
        if self.cluster:
            lines += ["", "[cluster]"] + [f"{k} = {_toml(v)}" for k, v in self.cluster.items()]
        if self.backing:
            lines += ["", f"[backing.{self.tier}]"] + [f"{k} = {_toml(v)}"
                                                       for k, v in self.backing.items()]
        path = self.workdir / "pullcache.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 20.0) -> "Pullcache":
        if self.proc is not None and self.proc.poll() is None:
            # A second start would be refused (the cache lock) while the first daemon still
            # answered /healthz, and the first would outlive the test, orphaned.
            raise RuntimeError(f"pullcache (pid {self.proc.pid}) is running already")
        config = self.write_config()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env = {k: v for k, v in env.items() if not k.startswith("PULLCACHE_")}
        env.update(self.env)
        return self.launch([sys.executable, "-m", "pullcache", "serve", "--config", str(config)],
                           env, timeout)

    def launch(self, argv: list[str], env: dict[str, str], timeout: float) -> "Pullcache":
        """Runs ``argv`` as this daemon (its output appended to the log) and waits until
        /healthz answers 200; if it does not, the process is stopped and the error carries
        the log."""
        with open(self.log_path, "ab") as log:
            self.run_start = log.tell()   # (the log goes on across restarts)
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env, cwd=ROOT)
        proc = self.proc
        try:
            wait_http(self.admin_url + "/healthz", timeout=timeout, ok_statuses=(200,),
                      abort=lambda: None if proc.poll() is None else "pullcache exited")
        except Exception:
            self.stop()
            raise RuntimeError(f"pullcache did not start:\n{self.log()}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code, self.proc = self.proc.returncode, None
        return code

    def reload(self, timeout: float = 15.0) -> bool:
        """Write the config again and SIGHUP; True once pullcache says it reloaded, False if
        it said the reload failed."""
        self.write_config()
        before = len(self.events("reloaded")), len(self.events("reload_failed"))
        self.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: (len(self.events("reloaded")),
                            len(self.events("reload_failed"))) != before, timeout,
                   "pullcache to reload")
        return len(self.events("reloaded")) > before[0]

    def kill(self) -> None:
        """SIGKILL: no cleanup runs, exactly like a crash or the OOM killer."""
        self.stop(signal.SIGKILL)

    def restart(self) -> "Pullcache":
        self.stop()
        return self.start()

    def rss_peak_kib(self) -> int:
        """The running process's peak resident set (VmHWM), in KiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("VmHWM:"))

    def log(self, since: int = 0) -> str:
        """The log from byte ``since`` on."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[since:].decode(errors="replace")

    def events(self, name: str, this_run: bool = False) -> list[dict]:
        """The log's records of event ``name``; ``this_run``: only the last launch's."""
        out = []
        for line in self.log(self.run_start if this_run else 0).splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                out.append(record)
        return out

    def wait_committed(self, *digests: str, timeout: float = 30.0) -> None:
        """Until every digest's fill is committed: a client has the last byte at
        verification, and fsync, rename and index follow (``cache/fill.py``)."""
        def done() -> bool:
            committed = {e.get("digest") for e in self.events("fill_committed")}
            return set(digests) <= committed
        wait_until(done, timeout, f"the commit of {', '.join(digests)}")

    def metric(self, name: str, *, required: bool = False, **labels: str) -> float:
        """The value of one sample on /metrics (summed over matching label sets); 0 when
        absent, or, with ``required``, an AssertionError naming the missing sample."""
        with urllib.request.urlopen(self.admin_url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        total, found = 0.0, False
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            key, value = line.rsplit(" ", 1)
            metric, _, rest = key.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if metric == name and (not labels or all(p in got.split(",") for p in want.split(","))):
                total += float(value)
                found = True
        assert found or not required, f"{name}{{{want}}} is not on /metrics"
        return total

    def __enter__(self) -> "Pullcache":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return json.dumps([str(v) for v in value])
    if isinstance(value, dict):   # an inline table
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))
