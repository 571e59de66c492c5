"""Who is asking, which upstream they mean, and whether they may: the request's gate.

In the order a request meets them:

- ``identity``: client authentication and network policy (``[access]``): the user, or
  401/403/429 before any work;
- ``routing``: request path → (upstream, repository), no I/O;
- ``policy``: may this user pull this repository through this upstream
  (``[[upstream]]`` ``users``/``allow``/``deny``), no I/O.

A refused request never reaches the proxy, so its answer reveals nothing about the cache.
"""
