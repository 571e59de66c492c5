"""pullcache.cache.verify and ops.verify: every committed file re-hashed against its name;
repair removes only content that is wrong."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import os
import resource
from pathlib import Path

from pullcache.cache.index import relpath_of
from pullcache.cache.store import BlobStore, Budget
from pullcache.cache.verify import verify
from pullcache.oci import Digest
from pullcache.ops.verify import Verifier, VerifyProgress


def put(root: Path, tree: str, data: bytes, *, name: str | None = None) -> str:
    hex_ = name or hashlib.sha256(data).hexdigest()
    path = root / tree / "sha256" / hex_[:2] / hex_
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.relative_to(root).as_posix()


def test_verify_finds_only_the_files_whose_bytes_differ_from_their_name(tmp_path):
    put(tmp_path, "blobs", b"good blob")
    put(tmp_path, "manifests", b'{"good": "manifest"}')
    bad = put(tmp_path, "blobs", b"rotten", name=hashlib.sha256(b"fresh").hexdigest())
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "x.part").write_bytes(b"a fill in progress is not checked")
    seen = []
    report = verify(tmp_path, progress=lambda r: seen.append(r.checked))
    assert report.checked == 3 and report.bytes == len(b"good blob") + 20 + len(b"rotten")
    assert report.bad == [bad] and not report.unreadable and not report.ok
    assert seen == [1, 2, 3]


def test_an_empty_or_missing_cache_verifies_clean(tmp_path):
    report = verify(tmp_path / "nothing-here")
    assert report.ok and report.checked == 0


async def test_repair_deletes_only_content_that_is_wrong_never_on_emfile(tmp_path):
    """Issue 26 #18: with every fd taken (EMFILE), verify --repair called each file
    unreadable and dropped it. Now such files are reported as unchecked and kept; a real
    mismatch and a vanished file are still repaired."""
    store = BlobStore(tmp_path, Budget(1 << 30))
    await store.open()
    try:
        good, bad, gone = (Digest.of(bytes([n]) * 5000) for n in (1, 2, 3))
        for n, digest in enumerate((good, bad, gone), 1):
            await store.put_bytes("blob", digest, bytes([n]) * 5000)
        (tmp_path / relpath_of(f"blob:{bad}")).write_bytes(b"rotten" * 100)
        (tmp_path / relpath_of(f"blob:{gone}")).unlink()
        keys = {f"blob:{d}" for d in (good, bad, gone)}

        # One worker thread, its index connection open before the descriptors run out:
        # diskcache opens a connection per thread, and a new one would hit EMFILE first.
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
        assert await asyncio.to_thread(lambda: len(list(store.index.keys()))) == 3
        with no_free_fds():
            progress = VerifyProgress(repair=True)
            assert await Verifier(store).run(progress) is False
        starved = {b["key"]: b for b in progress.bad}
        assert starved[f"blob:{good}"]["removed"] is False
        assert starved[f"blob:{good}"]["repairable"] is False
        assert starved[f"blob:{bad}"]["removed"] is False
        assert set(store.index.keys()) >= {f"blob:{good}", f"blob:{bad}"}
        assert (tmp_path / relpath_of(f"blob:{good}")).exists()

        progress = VerifyProgress(repair=True)
        assert await Verifier(store).run(progress) is False
        assert {b["key"]: (b["removed"], b["repairable"]) for b in progress.bad} == {
            f"blob:{bad}": (True, True), f"blob:{gone}": (True, True)}
        assert set(store.index.keys()) & keys == {f"blob:{good}"}
    finally:
        await store.close()


@contextlib.contextmanager
def no_free_fds():
    """Every file descriptor this process may open is taken (EMFILE) for the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 64, hard))
    held = []
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
