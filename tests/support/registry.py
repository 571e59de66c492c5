"""A real CNCF Distribution registry (Debian's ``docker-registry``) on 127.0.0.1.

``start_registry(workdir, flavour)`` writes ``workdir/config.yml``, runs
``docker-registry serve config.yml`` (output to ``workdir/registry.log``) and
returns once ``/v2/`` answers. Every process started here is also stopped by an
``atexit`` hook, so a crashed test session leaves no orphan registry behind.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.binaries import require
from tests.support.ports import LOOPBACK, free_port, wait_http

if TYPE_CHECKING:
    from tests.support.tokenrealm import TokenRealm

REGISTRY_BIN = os.environ.get("TEST_REGISTRY_BIN", "docker-registry")
FLAVOURS = ("anonymous", "basic", "token")
START_TIMEOUT = 20.0

_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


def _terminate(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, wait, SIGKILL if needed; always reaps."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with _live_lock:
        _live.discard(proc)


@atexit.register
def _stop_all_registries() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        _terminate(proc)


def _yaml(value: object, indent: int = 0) -> str:
    """Tiny YAML emitter for nested dicts of scalars (scalars are JSON-quoted, valid YAML)."""
    pad = "  " * indent
    lines = []
    for key, val in value.items():  # type: ignore[attr-defined]
        if isinstance(val, dict):
            lines.append(f"{pad}{key}:")
            lines.append(_yaml(val, indent + 1))
        else:
            lines.append(f"{pad}{key}: {json.dumps(val)}")
    return "\n".join(lines)


@dataclass
class Registry:
    """A registry process bound to ``host``; ``stop()``/``start()`` keep port and storage."""

    url: str
    host: str
    flavour: str
    username: str | None
    password: str | None
    storage: Path
    workdir: Path = field(repr=False)
    config_path: Path = field(repr=False)
    log_path: Path = field(repr=False)
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_text(self) -> str:
        """Everything the registry has logged so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        """(Re)start on the same port and storage; return once ``/v2/`` answers (200 or 401)."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                [require(REGISTRY_BIN), "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            )
        with _live_lock:
            _live.add(proc)
        self._proc = proc

        def exited() -> str | None:
            if proc.poll() is None:
                return None
            return f"docker-registry exited with {proc.returncode}; log:\n{self.log_text()[-4000:]}"

        try:
            wait_http(self.url + "/v2/", timeout=START_TIMEOUT, abort=exited)
            if (reason := exited()) is not None:  # something else answered on our port
                raise RuntimeError(reason)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate the process and wait for it (idempotent)."""
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _auth_section(workdir: Path, flavour: str, username: str, password: str,
                  token_realm: "TokenRealm | None") -> dict:
    if flavour == "anonymous":
        return {}
    if flavour == "basic":
        line = subprocess.run([require("htpasswd"), "-Bbn", username, password], check=True,
                              capture_output=True, text=True).stdout.strip()
        path = workdir / "htpasswd"
        path.write_text(line + "\n")
        return {"auth": {"htpasswd": {"realm": "pullcache-test-basic", "path": str(path)}}}
    if flavour == "token":
        if token_realm is None:
            raise ValueError("flavour 'token' needs token_realm=")
        bundle = workdir / "token-rootcerts.pem"
        bundle.write_bytes(token_realm.certificate_pem)
        return {"auth": {"token": {
            "realm": token_realm.token_url,
            "service": token_realm.service,
            "issuer": token_realm.issuer,
            "rootcertbundle": str(bundle),
        }}}
    raise ValueError(f"flavour must be one of {FLAVOURS}, not {flavour!r}")


def write_config(workdir: Path, port: int, storage: Path, auth: dict) -> Path:
    """Write ``workdir/config.yml`` for a registry on 127.0.0.1:port and return its path."""
    config = {
        "version": "0.1",
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "redirect": {"disable": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"{LOOPBACK}:{port}", "secret": "pullcache-test-http-secret"},
        "health": {"storagedriver": {"enabled": False}},
        **auth,
    }
    path = workdir / "config.yml"
    path.write_text(_yaml(config) + "\n")
    return path


def start_registry(
    workdir: Path,
    flavour: str = "anonymous",
    *,
    username: str = "alice",
    password: str = "s3cret",
    token_realm: "TokenRealm | None" = None,
    port: int | None = None,
) -> Registry:
    """Start a registry of ``flavour`` ("anonymous" | "basic" | "token") under ``workdir``.

    basic: htpasswd (bcrypt) with ``username``/``password``.
    token: trusts ``token_realm`` (its users decide who may push; ``username``/``password``
    are recorded on the Registry for convenience and should match a realm user).
    With ``port=None`` a free port is picked (and re-picked if another process wins the race).
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, not {flavour!r}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    auth = _auth_section(workdir, flavour, username, password, token_realm)
    anonymous = flavour == "anonymous"
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        reg = Registry(
            url=f"http://{LOOPBACK}:{chosen}", host=f"{LOOPBACK}:{chosen}", flavour=flavour,
            username=None if anonymous else username, password=None if anonymous else password,
            storage=storage, workdir=workdir, config_path=write_config(workdir, chosen, storage, auth),
            log_path=workdir / "registry.log",
        )
        try:
            reg.start()
            return reg
        except RuntimeError as exc:
            if attempt + 1 < attempts and "address already in use" in str(exc):
                continue
            raise
    raise AssertionError("unreachable")
