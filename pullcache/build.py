"""What this build is: pullcache's version and the versions it runs on.

Read once from the installed package metadata, so a wheel, an editable checkout and the
container image all report what pip recorded.
"""

from __future__ import annotations

import platform
from functools import cache
from importlib import metadata


def _installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


@cache
def build_info() -> dict[str, str]:
    """``{"version", "python", "aiohttp"}``: the labels of ``pullcache_build_info``."""
    return {"version": _installed("pullcache"), "python": platform.python_version(),
            "aiohttp": _installed("aiohttp")}


def version_line() -> str:
    """What ``pullcache --version`` prints."""
    info = build_info()
    return f"pullcache {info['version']} (python {info['python']}, aiohttp {info['aiohttp']})"
