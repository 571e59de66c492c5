"""The status page at ``/`` on the admin listener: one static HTML file (CSS and a few
lines of JS inline) that polls ``/admin/status``. No build step, nothing from a CDN."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

_PAGE = resources.files(__package__).joinpath("status.html")


def setup_page(app: web.Application) -> None:
    body = _PAGE.read_bytes()

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})
    app.router.add_get("/", page)
