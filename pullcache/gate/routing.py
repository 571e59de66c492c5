"""Which upstream and repository a request is for. No I/O.

In order (docs/protocol.md §1.4): containerd's ``?ns=<host>``; a path prefix
``/<host>/v2/<name>/…`` (dockerd ≥ 25 mirror URLs with a path, containerd hosts without
``override_path``); ``/v2/<host>/<name>/…`` (containerd ``override_path``, podman/CRI-O
``location = "mirror/ghcr.io"``); otherwise the default upstream (classic dockerd).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Iterable

from ..errors import BlobUploadUnknown, NameInvalid, NameUnknown, NotFound
from ..oci import validate_name

DOCKER_HUB = "docker.io"
_ENDPOINT = re.compile(
    r"^(?P<name>.+?)/(?:(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)|(?P<tags>tags/list))$")
_UPLOAD = re.compile(r"^.+?/blobs/uploads/[^/]*$")


@dataclass(frozen=True, slots=True)
class Route:
    upstream: str        # the configured upstream's host name
    repo: str            # repository name at that upstream (docker.io: with library/)
    namespace: str | None = None   # the registry host the client named, echoed as OCI-Namespace


@dataclass(frozen=True, slots=True)
class Target:
    route: Route
    kind: str            # manifests | blobs | referrers | tags
    reference: str       # tag, digest, or "" for tags/list


class UpstreamTable:
    """Host names (and aliases) → configured upstream; one is the default."""

    def __init__(self, hosts: Iterable[tuple[str, Iterable[str]]], default: str) -> None:
        self.default = default
        self._by_host: dict[str, str] = {}
        for host, aliases in hosts:
            for name in (host, *aliases):
                self._by_host[name.lower()] = host

    def lookup(self, host: str) -> str | None:
        return self._by_host.get(host.lower())


_HOST = re.compile(r"(?:localhost|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+)(?::[0-9]+)?"
                   r"|[a-zA-Z0-9-]+:[0-9]+")


def looks_like_host(component: str) -> bool:
    """The docker reference grammar's rule: a first component with a dot or a port, or
    ``localhost``, names a registry rather than a repository."""
    return _HOST.fullmatch(component) is not None


def resolve(table: UpstreamTable, tail: str, *, prefix: str | None = None,
            ns: str | None = None) -> Target:
    """Map ``/[<prefix>/]v2/<tail>`` (``tail`` = ``<name>/<endpoint>``) to a ``Target``.

    A pure function of immutable inputs, asked the same few questions on the hot path
    (a node rollout pulls one manifest thousands of times): answers are memoized.
    """
    return _resolve(table, tail, prefix, ns)


@functools.lru_cache(maxsize=4096)
def _resolve(table: UpstreamTable, tail: str, prefix: str | None, ns: str | None) -> Target:
    m = _ENDPOINT.match(tail)
    if not m:
        if _UPLOAD.match(tail):   # end-13 GET of an upload session: none exist here
            raise BlobUploadUnknown(tail)
        raise NotFound(tail, message="not a pull API endpoint")
    name = m.group("name")
    kind = "tags" if m.group("tags") else m.group("kind")
    reference = m.group("ref") or ""
    namespace = ns or None
    upstream: str | None = None
    if ns:
        upstream = table.lookup(ns)
        if upstream is None:
            # Lets containerd fall back to its next host instead of trusting our answer.
            raise NameUnknown(ns, message=f"no upstream configured for namespace {ns!r}")
    if prefix is not None:
        by_prefix = table.lookup(prefix)
        if by_prefix is None:
            raise NameUnknown(prefix, message=f"no upstream configured for {prefix!r}")
        upstream, namespace = upstream or by_prefix, namespace or prefix
    first, _, rest = name.partition("/")
    if rest and looks_like_host(first):
        host = table.lookup(first)
        if upstream is None:
            if host is None:
                raise NameUnknown(first, message=f"no upstream configured for {first!r}")
            upstream, namespace, name = host, first, rest
        elif host == upstream:
            name = rest   # containerd override_path: /v2/<host>/<name>?ns=<host>
        # else: ns or a prefix chose the upstream, and the name just starts with a domain
        # (gcr.io/google.com/cloudsdktool/…): it stays part of the name.
    upstream = upstream or table.default
    validate_name(name)
    if upstream == DOCKER_HUB and "/" not in name:
        name = f"library/{name}"   # docker reference normalisation: alpine → library/alpine
    return Target(Route(upstream, name, namespace), kind, reference)


__all__ = ["Route", "Target", "UpstreamTable", "resolve", "NameInvalid"]
