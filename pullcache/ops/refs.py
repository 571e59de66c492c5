"""Image references as people type them → the upstream and repository that serve them.

``docker.io/library/python:3.12-slim``, ``ghcr.io/org/app@sha256:…``, ``python:3.12`` (a
short Docker Hub name: ``docker.io/library/python``), ``127.0.0.1:5000/team/app``. The host
is looked up in the routing table exactly as a pull's would be (aliases included).
"""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass

from ..errors import NameInvalid
from ..oci import TAG_RE, Digest
from ..gate.routing import DOCKER_HUB, Route, UpstreamTable, looks_like_host, resolve


@dataclass(frozen=True, slots=True)
class ImageRef:
    route: Route
    reference: str          # a tag or a digest

    @property
    def is_digest(self) -> bool:
        return ":" in self.reference

    def __str__(self) -> str:
        sep = "@" if self.is_digest else ":"
        return f"{self.route.upstream}/{self.route.repo}{sep}{self.reference}"


def parse_image(table: UpstreamTable, text: str) -> ImageRef:
    """``[host/]name[:tag][@digest]``, the docker reference grammar; the name, tag and digest
    are checked by the pull path's own grammar (``oci.py``), so what parses here can be
    pulled. With both a tag and a digest (``alpine:3.19@sha256:…``, as Renovate writes
    pins), the digest is the reference and the tag is only checked, as docker does."""
    text = text.strip()
    if not text or any(c.isspace() for c in text):
        raise NameInvalid(text, message=f"not an image reference: {text!r}")
    name, at, digest = text.partition("@")
    tag = "latest"
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
    if not name:
        raise NameInvalid(text, message=f"not an image reference (no name): {text!r}")
    if not TAG_RE.fullmatch(tag):
        raise NameInvalid(text, message=f"not an image reference (invalid tag {tag!r}): "
                                        f"{text!r}")
    reference = str(Digest.parse(digest)) if at else tag   # DigestInvalid (400) if bad
    first = name.split("/", 1)[0]
    if not ("/" in name and looks_like_host(first)) and table.lookup(DOCKER_HUB):
        name = f"{DOCKER_HUB}/{name}"   # docker's rule: a name without a host is Docker Hub's
    target = resolve(table, f"{name}/manifests/{reference}")
    return ImageRef(target.route, reference)


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Platform":
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise NameInvalid(text, message=f"platform must be os/arch[/variant], got {text!r}")
        return cls(*parts)

    @classmethod
    def host(cls) -> "Platform":
        machine = _platform.machine().lower()
        arch = _ARCH.get(machine, machine)
        return cls("linux", arch, "v8" if arch == "arm64" else None)

    def matches(self, spec: dict) -> bool:
        """An index entry's ``platform`` (image-spec image-index.md) is this one; a missing
        variant on either side matches any."""
        if spec.get("os") != self.os or spec.get("architecture") != self.architecture:
            return False
        return not self.variant or not spec.get("variant") or spec["variant"] == self.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
