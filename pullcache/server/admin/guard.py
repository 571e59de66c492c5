"""Who may change the daemon through its admin API: not a web page from another site.

A browser that can reach ``admin_listen`` (an operator's, on the same network) would send a
page's ``<form method=post enctype=text/plain>`` there without asking anyone: such a "simple"
request needs no CORS preflight (Fetch standard, "CORS-safelisted request-header"). So every
state-changing call under ``/admin/`` (``POST``, ``PUT``, ``PATCH``, ``DELETE``):

- must say ``Content-Type: application/json``, which a form cannot send and a script of
  another site can send only after a preflight this server never grants (``415``);
- must not carry an ``Origin`` other than the admin listener's own (RFC 6454), and not
  ``Sec-Fetch-Site: cross-site`` (``403``);
- with ``server.admin_token`` set, must carry ``Authorization: Bearer <token>`` (RFC 6750;
  ``401``), for admin listeners that others than the operator can reach.

Reads (the status page, ``GET /admin/…``) and the probes stay open: a browser does not let
another site's script read their answers, and probes have no credentials to send.
"""

from __future__ import annotations

from aiohttp import web

from ... import errors
from ..keys import ADMIN_TOKEN, core_of

CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pullcache-admin"'}


class NotJson(errors.PullcacheError):
    status, code, message = 415, "UNSUPPORTED", "admin calls take Content-Type: application/json"


@web.middleware
async def same_site(request: web.Request, handler):
    """Refuse a state-changing ``/admin/`` call from another site (the module's rules)."""
    if request.method in CHANGES and request.path.startswith("/admin/"):
        check(request)
    return await handler(request)


def check(request: web.Request) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise errors.Denied(message="cross-site admin call refused", detail={"origin": origin})
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        raise errors.Denied(message="cross-site admin call refused")
    if request.content_type != "application/json":
        raise NotJson(detail={"content_type": request.content_type})
    if not core_of(request)[ADMIN_TOKEN].admits(request.headers.get("Authorization")):
        raise errors.Unauthorized(message="the admin token is missing or wrong",
                                  headers=CHALLENGE)
