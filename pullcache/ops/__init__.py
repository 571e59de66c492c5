"""What an operator drives on a running cache (DESIGN §6, issue #12): warm jobs, pinned
images, the catalog (ls/rm), verify, and the status samples. Long operations are tasks with
an owner and an end, with progress a caller polls through the admin API.

Layering: ``server → ops → proxy → cache``. Nothing here knows aiohttp.web.
"""
