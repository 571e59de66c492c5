"""Where the ops routes live: on the admin app, or on the public app when admin_listen = ""."""

from pullcache.config import loads
from pullcache.server.admin import build_admin_app
from pullcache.server.app import build_app


def paths(app):
    return {r.get_info().get("path") for r in app.router.resources()}


def test_ops_routes_only_on_the_admin_app(tmp_path):
    public = build_app(loads(f'[cache]\ndir = "{tmp_path}"\n', env={}))
    assert not {"/metrics", "/healthz", "/readyz"} & paths(public)
    assert {"/metrics", "/healthz", "/readyz"} <= paths(build_admin_app(public))


def test_ops_routes_on_the_public_app_without_an_admin_listener(tmp_path):
    cfg = loads(f'[server]\nadmin_listen = ""\n[cache]\ndir = "{tmp_path}"\n', env={})
    assert {"/metrics", "/healthz", "/readyz"} <= paths(build_app(cfg))
