"""Warming: fetch an image's manifests, config and layers into the cache ahead of a pull.

Everything goes through ``Proxy`` exactly as a client's pull would: the tag is resolved by
the manifest policy (tag records, HEAD revalidation), and each blob by ``Proxy.blob``, so a
warm and a concurrent real pull share one fill, hence one upstream download. The warm does
not read the bytes: it awaits the fill's verified commit.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

import structlog

from .. import errors
from ..cache.fill import Fill, FillFailed
from ..cache.store import BlobStore
from ..oci import DEFAULT_ACCEPT, INDEX_TYPES, Digest
from ..gate.routing import UpstreamTable
from .graph import references
from .jobs import Job, Jobs, describe
from .refs import ImageRef, Platform, parse_image

log = structlog.get_logger("pullcache.warm")
BLOB_CONCURRENCY = 4
IMAGE_CONCURRENCY = 2   # images of one job at a time; each fetches BLOB_CONCURRENCY blobs
MAX_WARM_JOBS = 4       # warm jobs at once; another is refused (429), not queued


@dataclass
class ImageProgress:
    """One image of a warm job, as the CLI and the status page poll it."""
    ref: str
    state: str = "queued"          # queued | resolving | fetching | done | failed
    digest: str | None = None
    platforms: list[str] = field(default_factory=list)
    # Platforms the index names whose manifest the upstream does not have (404): skipped.
    missing: list[dict] = field(default_factory=list)
    layers_total: int = 0
    layers_done: int = 0
    bytes_total: int = 0
    cached_bytes: int = 0          # already in the cache
    fetched_bytes: int = 0         # fetched by (or with) this warm
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    fills: dict[str, Fill] = field(default_factory=dict, repr=False)

    def snapshot(self) -> dict:
        in_flight = sum(f.written for f in self.fills.values())
        now = time.monotonic()
        seconds = ((self.ended or now) - self.started) if self.started else 0.0
        return {"ref": self.ref, "state": self.state, "digest": self.digest,
                "platforms": self.platforms, "missing": list(self.missing),
                "layers_total": self.layers_total,
                "layers_done": self.layers_done, "bytes_total": self.bytes_total,
                "bytes_done": self.cached_bytes + self.fetched_bytes + in_flight,
                "cached_bytes": self.cached_bytes, "fetched_bytes": self.fetched_bytes,
                "seconds": round(seconds, 3), "error": self.error}


Plan = Callable[[dict[str, int]], None]


class Warmer:
    def __init__(self, proxy, table: UpstreamTable, store: BlobStore, *,
                 host_platform: Platform | None = None) -> None:
        self.proxy = proxy
        self.table = table
        self.store = store
        self.host_platform = host_platform or Platform.host()

    async def warm(self, text: str, progress: ImageProgress, *,
                   platforms: list[Platform] | None = None, all_platforms: bool = False,
                   on_plan: Plan | None = None) -> dict[str, int]:
        """Warm one image; return its index keys and their declared sizes.

        ``on_plan`` sees the keys once the manifests are resolved and before any blob is
        fetched (pinning keeps them from eviction from that moment). Raises the domain error
        that stopped it; ``progress`` says how far it got.
        """
        progress.started, progress.state = time.monotonic(), "resolving"
        try:
            ref = parse_image(self.table, text)
            keys, blobs = await self._manifests(ref, progress, platforms or
                                                [self.host_platform], all_platforms)
            progress.layers_total = len(blobs)
            progress.bytes_total = sum(blobs.values())
            keys.update({f"blob:{d}": size for d, size in blobs.items()})
            if on_plan is not None:
                on_plan(keys)
            progress.state = "fetching"
            limit = asyncio.Semaphore(BLOB_CONCURRENCY)
            # Every blob is tried even when one fails: the others still warm the cache.
            outcomes = await asyncio.gather(
                *(self._blob(ref, d, size, progress, limit) for d, size in blobs.items()),
                return_exceptions=True)
            failed = [o for o in outcomes if isinstance(o, BaseException)]
            if failed:
                raise failed[0]
        except (errors.PullcacheError, FillFailed) as exc:
            progress.state, progress.error = "failed", describe(exc)
            raise
        except Exception as exc:
            # Not a domain error: a defect. The image still ends failed, saying why.
            log.exception("warm_crashed", ref=text)
            progress.state, progress.error = "failed", describe(exc)
            raise
        finally:
            progress.ended = time.monotonic()
        progress.state = "done"
        return keys

    async def _manifests(self, ref: ImageRef, progress: ImageProgress,
                         platforms: list[Platform], all_platforms: bool
                         ) -> tuple[dict[str, int], dict[str, int]]:
        top = await self.proxy.manifest(ref.route, ref.reference, DEFAULT_ACCEPT)
        progress.digest = str(top.digest)
        keys = {f"manifest:{top.digest}": len(top.body)}
        chosen = [top]
        if top.media_type in INDEX_TYPES:
            children = references(top.body).children
            picked = [(d, p) for d, p in children
                      if all_platforms or any(want.matches(p) for want in platforms)]
            if not picked:
                offered = ", ".join(sorted({str(_platform(p)) for _, p in children}))
                raise errors.ManifestUnknown(
                    str(ref), message=f"{ref}: no manifest for "
                    f"{', '.join(map(str, platforms))} (index offers {offered})")
            chosen = []
            for digest, platform in picked:
                try:
                    chosen.append(await self.proxy.manifest(ref.route, digest, DEFAULT_ACCEPT))
                except errors.ManifestUnknown as exc:
                    # The index names a manifest the upstream no longer has: the other
                    # platforms still warm, and the image reports what is missing.
                    progress.missing.append({"platform": str(_platform(platform)),
                                             "digest": digest, "error": str(exc)})
                    continue
                progress.platforms.append(str(_platform(platform)))
            if not chosen:
                raise errors.ManifestUnknown(
                    str(ref), message=f"{ref}: the upstream has none of the index's "
                    f"manifests for {', '.join(m['platform'] for m in progress.missing)}")
            keys.update({f"manifest:{m.digest}": len(m.body) for m in chosen})
        blobs: dict[str, int] = {}
        for manifest in chosen:
            for digest, size in references(manifest.body).blobs:
                blobs.setdefault(digest, size)
        return keys, blobs

    async def _blob(self, ref: ImageRef, digest: str, size: int, progress: ImageProgress,
                    limit: asyncio.Semaphore) -> None:
        async with limit:
            cached_size, fill = await self.proxy.prefetch_blob(ref.route, Digest.parse(digest))
            if fill is None:
                progress.cached_bytes += cached_size
            else:
                progress.fills[digest] = fill
                try:
                    # shield: a cancelled warm must not cancel a fill others may be tailing.
                    result = await asyncio.shield(fill.result)
                finally:
                    progress.fills.pop(digest, None)
                progress.fetched_bytes += result.size
            progress.layers_done += 1


def _platform(spec: dict) -> Platform:
    return Platform(spec.get("os", "?"), spec.get("architecture", "?"), spec.get("variant"))


def start_warm(jobs: Jobs, warmer: Warmer, images: list[str], *,
               platforms: list[Platform] | None, all_platforms: bool) -> Job:
    """Start a job on ``jobs`` that warms ``images``; raise ``TooManyRequests`` when
    ``MAX_WARM_JOBS`` already run. One image's failure, whatever the exception, is that
    image's (its progress says why); the image tasks belong to the job's task group, so
    they end with it, and ``Jobs.close`` cancelling the job cancels them."""
    running = len(jobs.running("warm"))
    if running >= MAX_WARM_JOBS:
        raise errors.TooManyRequests(
            f"{running} warm jobs running",
            message=f"{MAX_WARM_JOBS} warm jobs are running already; try again when one ends")
    progress = [ImageProgress(ref) for ref in images]
    limit = asyncio.Semaphore(IMAGE_CONCURRENCY)
    stopped: list[str] = []   # why the images not yet begun are not tried

    async def one(p: ImageProgress) -> bool:
        async with limit:
            if stopped:
                p.state, p.error = "failed", f"not tried: {stopped[0]}"
                return False
            try:
                await warmer.warm(p.ref, p, platforms=platforms, all_platforms=all_platforms)
                return True
            except errors.TooManyRequests as exc:
                # The quota is spent: every further image would be refused the same way.
                stopped.append(str(exc))
                return False
            except Exception:  # noqa: BLE001 - the image failed; its progress says why
                return False

    async def run() -> bool:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(p), name=f"warm {p.ref}") for p in progress]
        return all(task.result() for task in tasks)
    return jobs.start("warm", run, lambda: {"images": [p.snapshot() for p in progress]})
