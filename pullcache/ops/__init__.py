"""What an operator drives on a running cache (docs/operations.md): warm jobs, pinned
images, the catalog (ls/rm), verify, and the status samples. Long operations are tasks with
an owner and an end, with progress a caller polls through the admin API.

Layering (docs/architecture.md): ``server → ops → cache``; ops drives the proxy it is given
but does not import it. Nothing here knows aiohttp.web.
"""
