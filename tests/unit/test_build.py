"""The build's identity: ``pullcache --version`` and ``pullcache_build_info``."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata

import pytest

from pullcache.build import build_info
from pullcache.cli import main
from pullcache.metrics import Metrics


def test_version_flag_prints_the_package_python_and_aiohttp_versions(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line == (f"pullcache {metadata.version('pullcache')} "
                    f"(python {platform.python_version()}, "
                    f"aiohttp {metadata.version('aiohttp')})")


def test_version_flag_from_the_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "pullcache", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"pullcache {metadata.version('pullcache')} (python ")


def test_build_info_gauge_is_one_with_the_versions_as_labels():
    info = build_info()
    assert set(info) == {"version", "python", "aiohttp"}
    assert info["version"] == metadata.version("pullcache") != "unknown"
    registry = Metrics().registry
    assert registry.get_sample_value("pullcache_build_info", info) == 1
    assert registry.get_sample_value("pullcache_build_info",
                                     {**info, "version": "0.0.0"}) is None
