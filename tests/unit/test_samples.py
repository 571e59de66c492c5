"""pullcache.ops.samples.Pulls: the status page's pull counts stay bounded, and the heavy
hitters stay on top."""

from __future__ import annotations

import tracemalloc

from pullcache.ops.samples import Pulls


def test_pull_counts_stay_bounded_and_keep_the_top_images():
    pulls = Pulls()
    tracemalloc.start()
    try:
        for n in range(40_000):                  # a long life: a new repository per pull
            pulls.count("docker.io", f"team/app-{n}")
            if n % 10 == 0:
                pulls.count("docker.io", "library/alpine")
            if n % 25 == 0:
                pulls.count("ghcr.io", "org/tool")
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 200 * 1024, f"{held} bytes held by the pull counts"
    assert len(pulls) <= pulls.capacity
    top = pulls.top(2)
    assert [t["image"] for t in top] == ["docker.io/library/alpine", "ghcr.io/org/tool"]
    # Counts may be overstated by what an entry inherited, never understated.
    assert top[0]["pulls"] >= 4_000 and top[1]["pulls"] >= 1_600


def test_pull_counts_are_exact_below_capacity():
    pulls = Pulls(capacity=3)
    for repo, n in (("a", 3), ("b", 1), ("c", 2)):
        for _ in range(n):
            pulls.count("docker.io", repo)
    assert pulls.top() == [{"image": "docker.io/a", "pulls": 3},
                           {"image": "docker.io/c", "pulls": 2},
                           {"image": "docker.io/b", "pulls": 1}]
    pulls.count("docker.io", "d")                 # takes b's place, with b's count + 1
    assert {t["image"] for t in pulls.top()} == {"docker.io/a", "docker.io/c", "docker.io/d"}
