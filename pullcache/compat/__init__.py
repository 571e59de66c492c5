"""Adapters over library internals that no public API offers, one module each.

Each adapter is the only place its library's private names appear, and each has a guard test
(``tests/unit/test_compat.py``) that fails naming the adapter when an upgrade breaks what it
assumes. ``pyproject.toml`` bounds those libraries to the major versions tested.

- ``diskcache_sql``: diskcache's SQL connection and its cull query (reads and bulk updates
  the public ``Cache`` API lacks);
- ``semaphore``: taking an ``asyncio.Semaphore`` slot without a yield;
- ``aiohttp_takeover``: detaching an upstream connection from aiohttp once the response
  headers are parsed.
"""
