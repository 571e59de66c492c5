"""Tags past their TTL with a blackholed or failing upstream: stale-while-revalidate answers
at once and revalidates behind the answer; stale answers cross accept classes."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tests.support.daemon import UpstreamSpec
from tests.support.http import request
from tests.support.images import (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST as DOCKER_LIST,
                                  OCI_INDEX, OCI_MANIFEST, Image, build_image, build_index,
                                  push)
from tests.support.ports import wait_until

OCI_CLIENT = [("Accept", OCI_MANIFEST), ("Accept", OCI_INDEX)]


def past_ttl(since: float, ttl: float = 1.0) -> None:
    """Wait (polling the clock) until a tag cached at ``since`` is past ``ttl``."""
    wait_until(lambda: time.time() > since + ttl + 0.1, timeout=10, what="tag_ttl passed")


def pull(pc, repo: str, image, headers=OCI_CLIENT, timeout: float = 20):
    """Manifest by tag, then every blob; returns the manifest reply."""
    r = request(pc.url, f"/v2/{repo}/manifests/v1", headers=headers, timeout=timeout)
    if r.status == 200:
        for blob in image.blobs():
            b = request(pc.url, f"/v2/{repo}/blobs/{blob.digest}", timeout=timeout)
            assert b.status == 200 and b.sha256 == blob.digest
    return r


def cached_then_blackholed(make_pullcache, registry, fault_proxy, repo: str, **extra):
    """An image pulled once through pullcache (tag_ttl 1 s), then the upstream blackholed
    and the TTL passed: ``(pc, image, HEADs upstream had seen)``."""
    image = build_image(repo)
    push(registry, repo, "v1", image)
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                     extra={"tag_ttl": "1s", **extra}))
    assert pull(pc, repo, image).status == 200
    cached_at = time.time()   # after the pull: the record is at least this old
    fault_proxy.set_fault("blackhole", match="/manifests/")
    past_ttl(cached_at)
    return pc, image, fault_proxy.count("HEAD", "/manifests/")


def test_swr_answers_at_once_while_upstream_is_blackholed(make_pullcache, registry,
                                                          fault_proxy):
    # A revalidation that waited would wait 60 s, longer than the client's 20 s timeout.
    pc, image, heads = cached_then_blackholed(
        make_pullcache, registry, fault_proxy, "swr/on",
        revalidate_timeout="60s", stale_while_revalidate="1h")
    for _ in range(3):   # the first pull after the TTL included
        r = pull(pc, "swr/on", image)
        assert r.status == 200 and r.body == image.manifest
        assert "warning" not in r.headers
    # The answers came while the blackhole still held the revalidation: upstream saw its
    # HEAD (one, for the three pulls), and none of the pulls waited for it.
    wait_until(lambda: fault_proxy.count("HEAD", "/manifests/") > heads, timeout=10,
               what="background revalidation reached upstream")
    assert fault_proxy.count("HEAD", "/manifests/") == heads + 1
    # The revalidation still hangs in the blackhole: shutdown cancels it (its owner), and
    # the daemon exits cleanly, without waiting for it.
    assert pc.stop() == 0
    assert "Task was destroyed" not in pc.log() and "Traceback" not in pc.log()
    fault_proxy.clear_fault()


def test_swr_off_first_pull_waits_for_the_revalidation(make_pullcache, registry, fault_proxy):
    pc, image, heads = cached_then_blackholed(
        make_pullcache, registry, fault_proxy, "swr/off",
        revalidate_timeout="2s", stale_while_revalidate="0s")
    r = pull(pc, "swr/off", image)
    # Stale with a Warning: it was answered only once the revalidation had timed out.
    assert r.status == 200 and r.body == image.manifest
    assert r.headers["warning"].startswith("299")
    assert fault_proxy.count("HEAD", "/manifests/") == heads + 1
    assert pc.events("served_stale")
    fault_proxy.clear_fault()


def test_swr_sees_a_moved_tag_one_request_later(make_pullcache, registry, fault_proxy):
    old, new = build_image("swr-old"), build_image("swr-new")
    push(registry, "swr/moved", "v1", old)
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url, extra={
        "tag_ttl": "1s", "stale_while_revalidate": "1h"}))
    assert request(pc.url, "/v2/swr/moved/manifests/v1", headers=OCI_CLIENT).body == \
        old.manifest
    cached_at = time.time()
    push(registry, "swr/moved", "v1", new)
    past_ttl(cached_at)
    # The request that starts the revalidation still gets the old digest...
    r = request(pc.url, "/v2/swr/moved/manifests/v1", headers=OCI_CLIENT)
    assert r.status == 200 and r.body == old.manifest
    # ...and a later one the new digest, once the background revalidation landed.
    wait_until(lambda: request(pc.url, "/v2/swr/moved/manifests/v1",
                               headers=OCI_CLIENT).body == new.manifest,
               timeout=15, what="moved tag seen")


def test_stale_answer_crosses_accept_classes(make_pullcache, registry, fault_proxy):
    image = build_image("stale-classes")   # an OCI image manifest
    push(registry, "stale/classes", "v1", image)
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url, extra={
        "tag_ttl": "1s", "stale_while_revalidate": "0s", "breaker_failures": 100}))
    assert pull(pc, "stale/classes", image).status == 200   # cached for the OCI class
    cached_at = time.time()
    fault_proxy.set_fault("status", match="/manifests/", status=503)
    past_ttl(cached_at)
    # A client of another accept class that takes the cached media type: served stale.
    other = [("Accept", OCI_MANIFEST), ("Accept", DOCKER_MANIFEST)]
    r = pull(pc, "stale/classes", image, headers=other)
    assert r.status == 200 and r.body == image.manifest
    assert r.headers["content-type"] == OCI_MANIFEST
    assert r.headers["warning"].startswith("299")
    # A client that cannot take it still gets the upstream's error, not a wrong type.
    r = request(pc.url, "/v2/stale/classes/manifests/v1", headers=[("Accept", DOCKER_MANIFEST)])
    assert r.status == 503 and r.error_codes
    fault_proxy.clear_fault()


# The manifest requests each client class sends for a tag (docs/protocol.md §1.1-§1.3).
FLEET = {
    "dockerd": ("HEAD", [("Accept", t) for t in (
        OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_LIST, OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v1+prettyjws", "application/json")]),
    "containerd": ("HEAD", [("Accept", f"{DOCKER_MANIFEST}, {DOCKER_LIST}, {OCI_MANIFEST}, "
                                       f"{OCI_INDEX}, */*")]),
    "podman/skopeo": ("GET", [("Accept", t) for t in (
        OCI_MANIFEST, DOCKER_MANIFEST,
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json", DOCKER_LIST, OCI_INDEX)]),
    "*/* (curl, requests)": ("GET", [("Accept", "*/*")]),
    "no index (platform only)": ("GET", [("Accept", DOCKER_MANIFEST), ("Accept", OCI_MANIFEST)]),
}


def test_no_client_class_waits_out_an_outage(make_pullcache, registry, fault_proxy):
    """Tags cached by one class (skopeo), past their TTL, the upstream blackholed: the first
    answer of every client class comes within ``revalidate_timeout`` (3 s), never after
    the upstream's full 15 s. A multi-arch tag (an index) and a single-platform one."""
    revalidate = 3.0
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url, extra={
        "tag_ttl": "1s", "stale_while_revalidate": "1h",
        "revalidate_timeout": f"{revalidate:g}s", "header_timeout": "15s"}))
    skopeo = FLEET["podman/skopeo"][1]
    tags = {}
    for n, multi in enumerate((True, True, False)):
        linux = [build_image(f"outage-{n}-{arch}", arch=arch) for arch in ("amd64", "arm64")]
        image = build_index(linux) if multi else linux[0]
        push(registry, f"outage/t{n}", "v1", image)
        assert request(pc.url, f"/v2/outage/t{n}/manifests/v1", headers=skopeo).body == \
            image.manifest
        tags[f"outage/t{n}"] = image
    cached_at = time.time()
    fault_proxy.set_fault("blackhole", match="/manifests/")
    past_ttl(cached_at)

    def first_answer(repo: str, method: str, headers) -> tuple[float, int]:
        began = time.monotonic()
        r = request(pc.url, f"/v2/{repo}/manifests/v1", method=method, headers=headers,
                    timeout=30)
        return time.monotonic() - began, r.status

    slowest: dict[str, float] = {}
    for repo, image in tags.items():
        with ThreadPoolExecutor(len(FLEET)) as pool:   # the fleet pulls the tag at once
            answers = {name: pool.submit(first_answer, repo, method, headers)
                       for name, (method, headers) in FLEET.items()}
            for name, answer in answers.items():
                seconds, status = answer.result()
                slowest[name] = max(slowest.get(name, 0.0), seconds)
                takes_it = isinstance(image, Image) or name != "no index (platform only)"
                # Served (fresh-looking or stale) if it takes what is cached; else the
                # upstream's timeout (then its open breaker), which the client falls back
                # on: either way at once.
                assert status in ((200,) if takes_it else (503, 504)), (repo, name, status)
    print("\nslowest first answer per client class, upstream blackholed:")
    for name, seconds in slowest.items():
        print(f"  {name:26} {seconds:6.3f} s")
    assert max(slowest.values()) <= revalidate + 0.5, slowest
    fault_proxy.clear_fault()


def test_a_tag_cached_by_one_client_class_is_a_hit_for_the_others(make_pullcache, registry,
                                                                   fault_proxy):
    """Within tag_ttl, a tag skopeo cached answers dockerd and containerd from the cache:
    the upstream sees no HEAD of theirs. A client that takes no index still asks upstream
    (it would be answered a platform manifest, not the cached index)."""
    linux = [build_image(f"standin-{arch}", arch=arch, docker=True)
             for arch in ("amd64", "arm64")]
    index = build_index(linux, docker=True)                          # a manifest list
    push(registry, "standin/multi", "v1", index)
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                     extra={"tag_ttl": "1h"}))
    path = "/v2/standin/multi/manifests/v1"
    assert request(pc.url, path, headers=FLEET["podman/skopeo"][1]).body == index.manifest
    asked = fault_proxy.count(substring="/manifests/v1")
    for name in ("dockerd", "containerd"):
        method, headers = FLEET[name]
        r = request(pc.url, path, method=method, headers=headers)
        assert r.status == 200 and r.headers["docker-content-digest"] == index.digest, name
    assert fault_proxy.count(substring="/manifests/v1") == asked
    method, headers = FLEET["no index (platform only)"]
    r = request(pc.url, path, method=method, headers=headers)
    assert r.status == 200 and r.body == linux[0].manifest   # the registry's linux/amd64
    assert fault_proxy.count(substring="/manifests/v1") > asked
