"""pullcache.server.listener: the pure parts (the fd budget); the sockets are exercised in
tests/integration/test_connections.py."""

from __future__ import annotations

import resource

from pullcache.server.listener import (FDS_PER_CONNECTION, FDS_RESERVED, connection_cap,
                                       raise_open_files_limit)


def test_the_cap_is_kept_when_the_fd_limit_allows_it():
    assert connection_cap(1000, FDS_RESERVED + 1000 * FDS_PER_CONNECTION) == 1000


def test_the_cap_is_lowered_to_what_the_fd_limit_allows():
    assert connection_cap(4096, FDS_RESERVED + 100 * FDS_PER_CONNECTION) == 100
    assert connection_cap(4096, 10) == 1     # never zero: the daemon still serves


def test_the_soft_fd_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024, hard), hard))
        assert raise_open_files_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
