"""What ``pullcache node-setup`` writes for each container runtime. Nothing is written here:
each runtime reads its own config (and containerd its version) to warn, and returns the
edits for ``node_setup.py`` to apply."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

HEADER = "# Written by pullcache node-setup; `pullcache node-setup {} --undo` removes it.\n"
DOCKER_HUB = "docker.io"
CRI_V1 = "io.containerd.grpc.v1.cri"       # containerd 1.x (config version 2)
CRI_IMAGES = "io.containerd.cri.v1.images"  # containerd 2.x (config version 3)


class NodeSetupError(Exception):
    """A runtime config node-setup cannot safely edit (named in the message)."""


@dataclass
class Edit:
    path: Path
    render: Callable[[str | None], str]   # the file's text now (None: absent) → wanted text


@dataclass
class Plan:
    edits: list[Edit]
    warnings: list[str] = field(default_factory=list)
    then: list[str] = field(default_factory=list)   # what the operator does next

    @property
    def touched(self) -> list[Path]:
        return [e.path for e in self.edits]


def _under(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


def _whole(text: str) -> Callable[[str | None], str]:
    return lambda _before: text


# -- containerd ------------------------------------------------------------------------------

def containerd(root: Path, mirror: str, registries: list[str] | None) -> Plan:
    """``certs.d/<registry>/hosts.toml`` (or ``_default``) naming the mirror first; what
    ``config_path`` and ``use_local_image_pull`` must be for CRI to read it: docs/protocol.md
    §1.2."""
    config_file = _under(root, "/etc/containerd/config.toml")
    config = _toml(config_file)
    plugins = config.get("plugins", {})
    images = plugins.get(CRI_IMAGES, {})
    paths = (images.get("registry", {}).get("config_path")
             or plugins.get(CRI_V1, {}).get("registry", {}).get("config_path"))
    warnings = []
    version = _containerd_version() if root == Path("/") else None
    # containerd 2.x's CRI looks in /etc/containerd/certs.d when config_path is unset.
    modern = config.get("version", 2) >= 3 or (version is not None and version >= (2, 0))
    if not paths and not modern:
        warnings.append(
            f"config_path is not set in {config_file}: the CRI plugin (the kubelet's pulls) "
            f"ignores hosts.toml. Set config_path = \"/etc/containerd/certs.d\" under "
            f"[plugins.\"{CRI_V1}\".registry] and restart containerd; ctr needs "
            f"--hosts-dir /etc/containerd/certs.d")
    if not images.get("use_local_image_pull", False) and (
            version is None and config.get("version", 2) >= 3 or
            version is not None and version >= (2, 1)):
        said = "is" if version else "if it is"
        warnings.append(
            f"containerd {said} 2.1 or later: with use_local_image_pull off in "
            f"[plugins.\"{CRI_IMAGES}\"] of {config_file}, CRI pulls go through the transfer "
            f"service, which ignores hosts.toml. Set use_local_image_pull = true")
    # Paths in config_path are the node's; the first is where containerd looks first.
    certs = _under(root, (paths or "/etc/containerd/certs.d").split(":")[0])
    edits = []
    for registry in registries or ["_default"]:
        origin = "registry-1.docker.io" if registry == DOCKER_HUB else registry
        server = "" if registry == "_default" else f'server = "https://{origin}"\n'
        text = (HEADER.format("containerd") + server + f'\n[host."{mirror}"]\n'
                '  capabilities = ["pull", "resolve"]\n')
        edits.append(Edit(certs / registry / "hosts.toml", _whole(text)))
    return Plan(edits, warnings, ["nothing to restart: containerd reads hosts.toml on each "
                                  "pull"])


def _toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise NodeSetupError(f"{path}: {exc}") from exc


def _containerd_version() -> tuple[int, int] | None:
    binary = shutil.which("containerd")
    if binary is None:
        return None
    try:
        said = subprocess.run([binary, "--version"], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\sv?(\d+)\.(\d+)\.", said)
    return (int(m.group(1)), int(m.group(2))) if m else None


# -- dockerd ---------------------------------------------------------------------------------

def docker(root: Path, mirror: str, registries: list[str] | None) -> Plan:
    """``registry-mirrors`` in ``daemon.json``, every other key kept."""
    others = [r for r in registries or [] if r != DOCKER_HUB]
    warnings = [f"dockerd mirrors Docker Hub only; not mirrored: {', '.join(others)}"] \
        if others else []
    path = _under(root, "/etc/docker/daemon.json")
    host = urlsplit(mirror).netloc

    def render(before: str | None) -> str:
        try:
            data = json.loads(before) if before and before.strip() else {}
        except ValueError as exc:
            raise NodeSetupError(f"{path}: not JSON ({exc}); left as it is") from exc
        if not isinstance(data, dict):
            raise NodeSetupError(f"{path}: not a JSON object; left as it is")
        wanted = json.loads(json.dumps(data))
        mirrors = wanted.setdefault("registry-mirrors", [])
        if mirror not in mirrors:
            mirrors.insert(0, mirror)   # first: dockerd tries the mirrors in order
        if mirror.startswith("http://"):
            insecure = wanted.setdefault("insecure-registries", [])
            if host not in insecure:
                insecure.append(host)
        if wanted == data and before is not None:
            return before   # the same settings, however they are formatted
        return json.dumps(wanted, indent=2) + "\n"
    return Plan([Edit(path, render)], warnings,
                ["reload dockerd to apply: systemctl reload docker (SIGHUP)"])


# -- podman / CRI-O / buildah / skopeo -------------------------------------------------------

def podman(root: Path, mirror: str, registries: list[str] | None) -> Plan:
    """A ``registries.conf.d`` drop-in: each registry's first mirror is pullcache, with the
    registry in the path so pullcache routes it to that upstream."""
    parts = urlsplit(mirror)
    location = parts.netloc + parts.path
    lines = [HEADER.format("podman").rstrip("\n")]
    for registry in registries or [DOCKER_HUB]:
        if ":" in registry:
            # The mirror's path names the registry, and a reference path has no ports.
            raise NodeSetupError(f"{registry}: podman cannot route a registry with a port "
                                 f"through a mirror path; give pullcache an alias for it")
        lines += ["", "[[registry]]", f'prefix = "{registry}"', f'location = "{registry}"',
                  "", "[[registry.mirror]]", f'location = "{location}/{registry}"']
        if parts.scheme == "http":
            lines.append("insecure = true")
    path = _under(root, "/etc/containers/registries.conf.d/50-pullcache.conf")
    return Plan([Edit(path, _whole("\n".join(lines) + "\n"))], [],
                ["nothing to restart: podman reads registries.conf.d on each command"])


RUNTIMES: dict[str, Callable[[Path, str, list[str] | None], Plan]] = {
    "containerd": containerd, "docker": docker, "podman": podman}
