"""Configuration: TOML → frozen dataclasses, one module per section, one loader.

Everything a caller needs is importable from here; the units are part of the config
vocabulary (``50 * GiB``, ``"5m"``).
"""

from pullcache.units import (  # noqa: F401
                             HOURS,
                             MINUTES,
                             SECONDS,
                             GiB,
                             KiB,
                             MiB,
                             TiB,
                             format_duration,
                             format_size,
                             parse_duration,
                             parse_size,
)

from .access import AccessConfig
from .backing import EcrBackingConfig, S3BackingConfig
from .cache import CacheConfig
from .cluster import ClusterConfig
from .fields import default_cache_dir, split_listen
from .loader import SECTIONS, Config, load, loads, render
from .server import LogConfig, ServerConfig
from .upstream import DEFAULT_DOCKER_HUB, UpstreamConfig, ecr_url_parts

__all__ = ["Config", "ServerConfig", "LogConfig", "CacheConfig", "UpstreamConfig",
           "EcrBackingConfig", "S3BackingConfig", "ClusterConfig", "AccessConfig", "DEFAULT_DOCKER_HUB", "SECTIONS", "load", "loads", "render",
           "split_listen", "default_cache_dir", "ecr_url_parts", "GiB", "HOURS", "KiB",
           "MINUTES", "MiB", "SECONDS", "TiB", "format_duration", "format_size",
           "parse_duration", "parse_size"]
