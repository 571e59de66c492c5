"""pullcache.config: parsers, validation with key paths, env overrides, rendering."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pullcache import config as cfg
from pullcache.config import (
    DEFAULT_DOCKER_HUB, GiB, HOURS, KiB, MiB, MINUTES, SECONDS, TiB, CacheConfig, Config,
    UpstreamConfig, format_duration, format_size, load, loads, parse_duration, parse_size,
    render, split_listen)
from pullcache.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
ENV = {"HOME": "/home/u"}  # a controlled environment: never the test runner's own


def error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        loads(text, env={**ENV, **(env or {})})
    return str(info.value)


def upstreams(*tables: str) -> str:
    return "".join(f"[[upstream]]\n{t}\n" for t in tables)


# --- parsers ------------------------------------------------------------------------------

def test_unit_constants():
    assert (KiB, MiB, GiB, TiB) == (2**10, 2**20, 2**30, 2**40)
    assert (SECONDS, MINUTES, HOURS) == (1, 60, 3600)


@pytest.mark.parametrize("text, expected", [
    (0, 0), (1234, 1234), ("1234", 1234), ("0", 0), ("10B", 10), ("10b", 10),
    ("1KB", 1000), ("1MB", 10**6), ("1GB", 10**9), ("2TB", 2 * 10**12),
    ("1KiB", 1024), ("1MiB", MiB), ("50GiB", 50 * GiB), ("1TiB", TiB),
    ("50gib", 50 * GiB), ("50GIB", 50 * GiB), ("50 GiB", 50 * GiB), (" 50GiB ", 50 * GiB),
    ("1.5GiB", 1536 * MiB), ("0.5KB", 500), ("1.25 kb", 1250),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("value", [
    "", "GiB", "five", "50 XiB", "50GiBs", "1,5GiB", ".5GiB", "1.GiB", "5 0GiB",
    True, False, 1.5, 1e9, None, [], {},
])
def test_parse_size_rejects(value):
    with pytest.raises(ConfigError, match="expected a size"):
        parse_size(value)


@pytest.mark.parametrize("value", [-1, "-1", "-5GiB", "1.5B", "0.0001KB", "1.1KiB"])
def test_parse_size_rejects_negative_and_fractional_bytes(value):
    with pytest.raises(ConfigError, match="whole, non-negative number of bytes"):
        parse_size(value)


@pytest.mark.parametrize("text, expected", [
    (0, 0.0), (30, 30.0), (1.5, 1.5), ("30", 30.0), ("2.5", 2.5),
    ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("2d", 172800.0),
    ("1h30m", 5400.0), ("1d2h3m4s5ms", 93784.005), ("1h 30m", 5400.0), (" 5m ", 300.0),
    ("1.5h", 5400.0), ("0s", 0.0), ("0.1s", 0.1), ("1s100ms", 1.1),
])
def test_parse_duration(text, expected):
    result = parse_duration(text)
    assert result == expected and type(result) is float


@pytest.mark.parametrize("value", [
    "", " ", "five", "5 minutes", "5M", "5S", "m", "1h30", "h1", "5mm", "1.h", "5m-1s",
    float("inf"), float("nan"), True, None, [],
])
def test_parse_duration_rejects(value):
    with pytest.raises(ConfigError, match='expected a duration like "5m"'):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.5, "-1", "-5m", "-1h30m"])
def test_parse_duration_rejects_negative(value):
    with pytest.raises(ConfigError, match="non-negative"):
        parse_duration(value)


@pytest.mark.parametrize("seconds", [0.0, 0.001, 0.5, 1.1, 5.0, 90.0, 300.0, 5400.0, 7200.0,
                                     172800.0, 93784.005, 1e-7, 1 / 3, 12345.678901])
def test_format_duration_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


def test_format_duration_and_size():
    assert [format_duration(s) for s in (0, 0.5, 30, 300, 5400, 7200, 86400)] == [
        "0s", "500ms", "30s", "5m", "1h30m", "2h", "1d"]
    assert format_duration(1 / 3) == 1 / 3
    assert [format_size(n) for n in (0, 1000, KiB, 1536 * MiB, 50 * GiB, 2 * TiB)] == [
        0, 1000, "1KiB", "1536MiB", "50GiB", "2TiB"]


@pytest.mark.parametrize("listen, expected", [
    ("127.0.0.1:5000", ("127.0.0.1", 5000)), ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("localhost:65535", ("localhost", 65535)), ("[::1]:5000", ("::1", 5000)),
    ("[::]:80", ("::", 80)), ("cache.internal:5000", ("cache.internal", 5000)),
])
def test_split_listen(listen, expected):
    assert split_listen(listen) == expected


@pytest.mark.parametrize("listen", [
    "", "5000", ":5000", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "::1:5000",
    "[::1]", "[nope]:80", "[::1:80", "300.1.1.1:80", "host name:80", "-bad:80", "a:b",
])
def test_split_listen_rejects(listen):
    with pytest.raises(ConfigError, match=re.escape('expected "host:port" or "[ipv6]:port"')):
        split_listen(listen)


def test_default_cache_dir():
    assert cfg.default_cache_dir({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/x/pullcache")
    assert cfg.default_cache_dir({"HOME": "/h"}) == Path("/h/.cache/pullcache")
    assert cfg.default_cache_dir({"XDG_CACHE_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.cache/pullcache")


# --- defaults and the whole document ------------------------------------------------------

def test_defaults():
    c = loads("", env=ENV)
    assert c.server.listen == "127.0.0.1:5000" and c.server.access_log is True
    assert c.cache == CacheConfig(dir=Path("/home/u/.cache/pullcache"), max_size=50 * GiB,
                                  high_watermark=0.95, low_watermark=0.85,
                                  fill_deadline=2 * HOURS, reconcile_on_start=True)
    assert (c.log.level, c.log.format) == ("info", "auto")
    assert c.upstreams == (DEFAULT_DOCKER_HUB,) and c.default_upstream is c.upstreams[0]
    assert DEFAULT_DOCKER_HUB == UpstreamConfig(
        host="docker.io", url="https://registry-1.docker.io",
        aliases=("index.docker.io", "registry-1.docker.io"), default=True)
    up = UpstreamConfig(host="ghcr.io", url="https://ghcr.io")
    assert (up.aliases, up.default, up.username, up.password, up.auth) == ((), False, None,
                                                                            None, "auto")
    assert (up.tag_ttl, up.serve_stale, up.connect_timeout, up.read_timeout,
            up.header_timeout) == (300.0, True, 5.0, 30.0, 15.0)
    assert (up.max_redirects, up.breaker_failures, up.breaker_cooldown) == (5, 5, 15.0)
    assert loads("upstream = []", env=ENV).upstreams == (DEFAULT_DOCKER_HUB,)
    assert Config().upstreams == (DEFAULT_DOCKER_HUB,)


def test_frozen_and_slotted():
    c = loads("", env=ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.server.listen = "0.0.0.0:1"  # type: ignore[misc]
    assert not hasattr(c.cache, "__dict__") and not hasattr(c, "__dict__")


def test_full_document():
    c = loads("""
        [server]
        listen = "[::]:8080"
        access_log = false
        [cache]
        dir = "~/pc"
        max_size = "1.5 TB"
        high_watermark = 1
        low_watermark = 0.5
        fill_deadline = 90
        reconcile_on_start = false
        [log]
        level = "DEBUG"
        format = "json"
        [[upstream]]
        host = "GHCR.io"
        url = "https://ghcr.io/"
        aliases = ["Mirror.Example:443"]
        username = "u"
        password = "p"
        tag_ttl = 0
        serve_stale = false
        connect_timeout = "500ms"
        read_timeout = "1m"
        header_timeout = 2.5
        max_redirects = 0
        breaker_failures = 1
        breaker_cooldown = "0s"
        [[upstream]]
        host = "127.0.0.1:5001"
        url = "http://127.0.0.1:5001/prefix"
        default = true
        """, env=ENV)
    assert c.server.listen == "[::]:8080" and c.server.access_log is False
    assert c.cache.dir == Path("~/pc").expanduser() and c.cache.max_size == 1_500_000_000_000
    assert (c.cache.high_watermark, c.cache.low_watermark) == (1.0, 0.5)
    assert c.cache.fill_deadline == 90.0 and c.cache.reconcile_on_start is False
    assert (c.log.level, c.log.format) == ("debug", "json")
    ghcr, local = c.upstreams
    assert (ghcr.host, ghcr.url, ghcr.aliases) == ("ghcr.io", "https://ghcr.io",
                                                   ("mirror.example:443",))
    assert (ghcr.username, ghcr.password, ghcr.tag_ttl, ghcr.serve_stale) == ("u", "p", 0.0,
                                                                               False)
    assert (ghcr.connect_timeout, ghcr.read_timeout, ghcr.header_timeout) == (0.5, 60.0, 2.5)
    assert (ghcr.max_redirects, ghcr.breaker_failures, ghcr.breaker_cooldown) == (0, 1, 0.0)
    assert local.url == "http://127.0.0.1:5001/prefix" and c.default_upstream is local


# --- errors name the key path -------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("foo = 1", "foo: unknown key"),
    ("[cache]\nmax_sise = 1", "cache.max_sise: unknown key"),
    ("[server]\nport = 1", "server.port: unknown key"),
    ("[log]\ncolour = true", "log.colour: unknown key"),
    (upstreams('host = "a.io"\nurl = "https://a.io"\nfoo = 1'), "upstream[0].foo: unknown key"),
    ("server = 5", "server: expected a table, got an integer"),
    ("[upstream]\nhost = 'a.io'", "upstream: expected an array of tables"),
    ("[upstream]", "upstream: expected an array of tables"),
    ("upstream = [1]", "upstream[0]: expected a table, got an integer"),
    ("[server]\nlisten = 5000", "server.listen: expected a string, got an integer"),
    ("[server]\nlisten = 'localhost'", 'server.listen: expected "host:port"'),
    ("[server]\naccess_log = 'yes'", 'server.access_log: expected a boolean (true or false), '
                                     'got "yes"'),
    ("[server]\naccess_log = 1", "server.access_log: expected a boolean"),
    ("[cache]\ndir = 5", "cache.dir: expected a string"),
    ("[cache]\nmax_size = 'lots'", 'cache.max_size: expected a size like "50GiB", got "lots"'),
    ("[cache]\nmax_size = 0", "cache.max_size: must be greater than zero"),
    ("[cache]\nmax_size = -1", "cache.max_size: expected a whole, non-negative"),
    ("[cache]\nhigh_watermark = 1.5", "cache.high_watermark: expected a number in (0, 1]"),
    ("[cache]\nlow_watermark = 0", "cache.low_watermark: expected a number in (0, 1]"),
    ("[cache]\nlow_watermark = true", "cache.low_watermark: expected a number"),
    ("[cache]\nlow_watermark = 'half'", "cache.low_watermark: expected a number"),
    ("[cache]\nlow_watermark = 0.95", "cache.low_watermark: must be below high_watermark"),
    ("[cache]\nhigh_watermark = 0.5", "cache.low_watermark: must be below high_watermark"),
    ("[cache]\nfill_deadline = 0", "cache.fill_deadline: must be greater than zero"),
    ("[log]\nlevel = 'verbose'", 'log.level: expected one of "debug", "info", "warning", '
                                 '"error", got "verbose"'),
    ("[log]\nformat = 'xml'", "log.format: expected one of"),
    ("[log]\nlevel = 1", "log.level: expected a string"),
    ("[server\n", "invalid TOML"),
])
def test_errors_name_the_key(text, message):
    assert error(text).startswith(message)


def upstream_error(body: str) -> str:
    return error(upstreams('host = "a.io"\nurl = "https://a.io"',
                           'host = "b.io"\nurl = "https://b.io"\n' + body))


@pytest.mark.parametrize("body, message", [
    ('tag_ttl = "five"', 'upstream[1].tag_ttl: expected a duration like "5m", got "five"'),
    ("tag_ttl = -1", "upstream[1].tag_ttl: expected a non-negative duration"),
    ("connect_timeout = 0", "upstream[1].connect_timeout: must be greater than zero"),
    ("read_timeout = '0s'", "upstream[1].read_timeout: must be greater than zero"),
    ("header_timeout = true", "upstream[1].header_timeout: expected a duration"),
    ("max_redirects = -1", "upstream[1].max_redirects: expected an integer >= 0, got -1"),
    ("max_redirects = 1.0", "upstream[1].max_redirects: expected an integer >= 0"),
    ("breaker_failures = 0", "upstream[1].breaker_failures: expected an integer >= 1"),
    ("breaker_cooldown = 'soon'", "upstream[1].breaker_cooldown: expected a duration"),
    ("serve_stale = 'no'", "upstream[1].serve_stale: expected a boolean"),
    ("default = 1", "upstream[1].default: expected a boolean"),
    ("auth = 'kerberos'", 'upstream[1].auth: expected one of "auto", "ecr", got "kerberos"'),
    ("auth = 'ecr'", 'upstream[1].region: required with auth = "ecr" unless the url is an '
                     'ECR registry (<account>.dkr.ecr.<region>.amazonaws.com)'),
    ("aliases = 'c.io'", "upstream[1].aliases: expected an array of registry hosts"),
    ("aliases = ['ok.io', 'not a host']", 'upstream[1].aliases: expected a registry host'),
    ("aliases = [1]", "upstream[1].aliases: expected a string"),
    ('username = "u"', "upstream[1].password: username and password must be set together"),
    ('password = "p"', "upstream[1].username: username and password must be set together"),
    ("password = 12345", "upstream[1].password: expected a string, got an integer"),
    ("trusted_realms = 'auth.b.io'", "upstream[1].trusted_realms: expected an array"),
    ("trusted_realms = ['https://auth.b.io']",
     'upstream[1].trusted_realms: expected a host, "host:port" or "*.domain", '
     'got "https://auth.b.io"'),
    ("trusted_realms = ['*.b.io:443']", "upstream[1].trusted_realms: expected a host"),
    ("trusted_realms = ['*.co.uk']",
     'upstream[1].trusted_realms: "*.co.uk" spans a public suffix'),
    ("trusted_realms = ['*.herokuapp.com']",
     'upstream[1].trusted_realms: "*.herokuapp.com" spans a public suffix'),
    ("trusted_realms = ['*.io']", 'upstream[1].trusted_realms: "*.io" spans a public suffix'),
])
def test_upstream_errors_name_the_key(body, message):
    assert upstream_error(body).startswith(message)


def test_trusted_realms():
    c = loads(upstreams('host = "r.example.co.uk"\nurl = "https://r.example.co.uk"\n'
                        'trusted_realms = ["Auth.Example.com", "auth.example.com:8443", '
                        '"*.example.co.uk"]'), env=ENV)
    assert c.upstreams[0].trusted_realms == ("auth.example.com", "auth.example.com:8443",
                                             "*.example.co.uk")
    assert UpstreamConfig(host="a.io", url="https://a.io").trusted_realms == ()


@pytest.mark.parametrize("table, message", [
    ('url = "https://a.io"', "upstream[0].host: required key is missing"),
    ('host = "a.io"', "upstream[0].url: required key is missing"),
    ('host = "https://a.io"\nurl = "https://a.io"', "upstream[0].host: expected a registry host"),
    ('host = "a.io:0"\nurl = "https://a.io"', "upstream[0].host: expected a registry host"),
    ('host = "a.io:99999"\nurl = "https://a.io"', "upstream[0].host: expected a registry host"),
    ('host = "a.io/x"\nurl = "https://a.io"', "upstream[0].host: expected a registry host"),
    ('host = ""\nurl = "https://a.io"', "upstream[0].host: expected a registry host"),
    ('host = "a.io"\nurl = "ftp://a.io"', "upstream[0].url: expected an http(s) URL"),
    ('host = "a.io"\nurl = "a.io"', "upstream[0].url: expected an http(s) URL"),
    ('host = "a.io"\nurl = "https://"', "upstream[0].url: expected an http(s) URL"),
    ('host = "a.io"\nurl = "https://a.io:x"', "upstream[0].url: expected an http(s) URL"),
    ('host = "a.io"\nurl = "https://a.io/?x=1"', "upstream[0].url: must not have a query"),
    ('host = "a.io"\nurl = "https://a.io/#top"', "upstream[0].url: must not have a query"),
    ('host = "a.io"\nurl = "https://u:hunter2@a.io"', "upstream[0].url: credentials belong"),
])
def test_upstream_identity_errors(table, message):
    text = error(upstreams(table))
    assert text.startswith(message) and "hunter2" not in text


def test_secret_values_never_appear_in_errors():
    assert "12345" not in upstream_error('username = "u"\npassword = 12345')
    assert "s3cret" not in error(upstreams('host="a.io"\nurl="https://a.io"\npassword="s3cret"'))


def test_ipv6_and_compose_style_hosts():
    c = loads(upstreams('host = "[::1]:5001"\nurl = "http://[::1]:5001"',
                        'host = "reg_1:5000"\nurl = "http://reg_1:5000/"'), env=ENV)
    assert [u.host for u in c.upstreams] == ["[::1]:5001", "reg_1:5000"]
    assert c.upstreams[1].url == "http://reg_1:5000"


def test_empty_credentials_mean_none():
    c = loads(upstreams('host = "a.io"\nurl = "https://a.io"\nusername = ""\npassword = ""'),
              env=ENV)
    assert (c.upstreams[0].username, c.upstreams[0].password) == (None, None)


# --- default upstream and host names ------------------------------------------------------

def test_default_upstream_is_the_marked_one():
    c = loads(upstreams('host = "a.io"\nurl = "https://a.io"',
                        'host = "b.io"\nurl = "https://b.io"\ndefault = true'), env=ENV)
    assert c.default_upstream.host == "b.io"


def test_default_upstream_is_the_first_when_none_is_marked():
    c = loads(upstreams('host = "a.io"\nurl = "https://a.io"',
                        'host = "b.io"\nurl = "https://b.io"'), env=ENV)
    assert c.default_upstream.host == "a.io"


def test_two_defaults_are_an_error():
    text = error(upstreams('host = "a.io"\nurl = "https://a.io"\ndefault = true',
                           'host = "b.io"\nurl = "https://b.io"\ndefault = true'))
    assert text == ("upstream[1].default: upstream[0] is already the default; only one may be")


@pytest.mark.parametrize("second, message", [
    ('host = "a.io"', 'upstream[1].host: "a.io" is already used by upstream[0].host'),
    ('host = "A.IO"', 'upstream[1].host: "a.io" is already used by upstream[0].host'),
    ('host = "b.io"\naliases = ["x.io", "mirror.a.io"]',
     'upstream[1].aliases[1]: "mirror.a.io" is already used by upstream[0].aliases[0]'),
    ('host = "mirror.a.io"', 'upstream[1].host: "mirror.a.io" is already used by '
                             'upstream[0].aliases[0]'),
    ('host = "b.io"\naliases = ["b.io"]',
     'upstream[1].aliases[0]: "b.io" is already used by upstream[1].host'),
])
def test_host_names_are_unique(second, message):
    first = 'host = "a.io"\nurl = "https://a.io"\naliases = ["mirror.a.io"]'
    assert error(upstreams(first, second + '\nurl = "https://b.io"')) == message


def test_config_validates_when_built_directly():
    with pytest.raises(ConfigError, match="at least one upstream"):
        Config(upstreams=())
    with pytest.raises(ConfigError, match="already used"):
        Config(upstreams=(DEFAULT_DOCKER_HUB, dataclasses.replace(DEFAULT_DOCKER_HUB,
                                                                  default=False)))
    with pytest.raises(ConfigError, match="low_watermark"):
        CacheConfig(low_watermark=0.99)


# --- environment overrides ----------------------------------------------------------------

def test_env_overrides_sections():
    c = loads("[cache]\nmax_size = '1GiB'", env={
        **ENV, "PULLCACHE_CACHE_MAX_SIZE": "10GiB", "PULLCACHE_SERVER_LISTEN": "0.0.0.0:80",
        "PULLCACHE_SERVER_ACCESS_LOG": "no", "PULLCACHE_LOG_LEVEL": "DEBUG",
        "PULLCACHE_LOG_FORMAT": "json", "PULLCACHE_CACHE_HIGH_WATERMARK": "0.9",
        "PULLCACHE_CACHE_LOW_WATERMARK": "0.5", "PULLCACHE_CACHE_FILL_DEADLINE": "30m",
        "PULLCACHE_CACHE_RECONCILE_ON_START": "0", "PULLCACHE_CACHE_DIR": "/srv/pc",
        "UNRELATED": "x", "pullcache_lowercase": "ignored"})
    assert c.cache.max_size == 10 * GiB and c.server.listen == "0.0.0.0:80"
    assert c.server.access_log is False and (c.log.level, c.log.format) == ("debug", "json")
    assert (c.cache.high_watermark, c.cache.low_watermark) == (0.9, 0.5)
    assert c.cache.fill_deadline == 1800.0 and c.cache.reconcile_on_start is False
    assert c.cache.dir == Path("/srv/pc")


@pytest.mark.parametrize("text, expected", [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True),
    ("false", False), ("0", False), ("No", False)])
def test_env_bools(text, expected):
    c = loads("", env={**ENV, "PULLCACHE_SERVER_ACCESS_LOG": text})
    assert c.server.access_log is expected


def test_env_overrides_upstreams():
    text = upstreams('host = "a.io"\nurl = "https://a.io"\nusername = "u"\npassword = "old"',
                     'host = "b.io"\nurl = "https://b.io"')
    c = loads(text, env={**ENV, "PULLCACHE_UPSTREAM_0_PASSWORD": "new",
                         "PULLCACHE_UPSTREAM_1_TAG_TTL": "1h", "PULLCACHE_UPSTREAM_1_DEFAULT": "yes",
                         "PULLCACHE_UPSTREAM_1_ALIASES": "X.io, y.io,",
                         "PULLCACHE_UPSTREAM_1_MAX_REDIRECTS": "2",
                         "PULLCACHE_UPSTREAM_1_CONNECT_TIMEOUT": "2.5"})
    a, b = c.upstreams
    assert (a.username, a.password) == ("u", "new")
    assert (b.tag_ttl, b.default, b.aliases) == (3600.0, True, ("x.io", "y.io"))
    assert (b.max_redirects, b.connect_timeout) == (2, 2.5)


def test_env_credentials_for_the_builtin_docker_hub():
    c = loads("", env={**ENV, "PULLCACHE_UPSTREAM_0_USERNAME": "me",
                       "PULLCACHE_UPSTREAM_0_PASSWORD": "dckr_pat"})
    assert c.upstreams == (dataclasses.replace(DEFAULT_DOCKER_HUB, username="me",
                                               password="dckr_pat"),)


def test_empty_env_variable_is_ignored():
    c = loads("[log]\nlevel = 'error'", env={**ENV, "PULLCACHE_LOG_LEVEL": ""})
    assert c.log.level == "error"


@pytest.mark.parametrize("env, message", [
    ({"PULLCACHE_CACHE_MAX_SISE": "1GiB"},
     "PULLCACHE_CACHE_MAX_SISE: unknown variable (cache has no key 'max_sise')"),
    ({"PULLCACHE_LISTEN": "0.0.0.0:1"}, "PULLCACHE_LISTEN: unknown variable"),
    ({"PULLCACHE_CACHEDIR": "/x"}, "PULLCACHE_CACHEDIR: unknown variable"),
    ({"PULLCACHE_UPSTREAM_PASSWORD": "x"}, "PULLCACHE_UPSTREAM_PASSWORD: unknown variable"),
    ({"PULLCACHE_UPSTREAM_0_PASSWROD": "x"},
     "PULLCACHE_UPSTREAM_0_PASSWROD: unknown variable (upstream[0] has no key 'passwrod')"),
    ({"PULLCACHE_UPSTREAM_1_PASSWORD": "x"},
     "PULLCACHE_UPSTREAM_1_PASSWORD: there is no upstream[1] (1 configured)"),
    ({"PULLCACHE_CACHE_MAX_SIZE": "big"},
     'PULLCACHE_CACHE_MAX_SIZE (cache.max_size): expected a size like "50GiB", got "big"'),
    ({"PULLCACHE_SERVER_ACCESS_LOG": "maybe"},
     'PULLCACHE_SERVER_ACCESS_LOG (server.access_log): expected a boolean (true or false), '
     'got "maybe"'),
    ({"PULLCACHE_UPSTREAM_0_MAX_REDIRECTS": "2.5"},
     "PULLCACHE_UPSTREAM_0_MAX_REDIRECTS (upstream[0].max_redirects): expected an integer"),
    ({"PULLCACHE_UPSTREAM_0_USERNAME": "me"},
     "upstream[0].password: username and password must be set together"),
])
def test_env_errors(env, message):
    assert error("", env=env).startswith(message)


def test_load_file_and_pullcache_config(tmp_path):
    path = tmp_path / "pc.toml"
    path.write_text("[log]\nlevel = 'warning'\n")
    assert load(path, env=ENV).log.level == "warning"
    assert load(str(path), env=ENV).log.level == "warning"
    assert load(None, env={**ENV, "PULLCACHE_CONFIG": str(path)}).log.level == "warning"
    assert load(None, env=ENV) == loads("", env=ENV)
    other = tmp_path / "other.toml"
    other.write_text("[log]\nlevel = 'error'\n")
    assert load(other, env={**ENV, "PULLCACHE_CONFIG": str(path)}).log.level == "error"


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml: cannot read the config file"):
        load(tmp_path / "missing.toml", env=ENV)
    bad = tmp_path / "bad.toml"
    bad.write_text("[cache\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load(bad, env=ENV)


def test_xdg_cache_home_from_env():
    c = loads("", env={"XDG_CACHE_HOME": "/xdg", "HOME": "/home/u"})
    assert c.cache.dir == Path("/xdg/pullcache")


# --- render -------------------------------------------------------------------------------

def test_render_round_trips():
    c = loads(upstreams(
        'host = "a.io"\nurl = "https://a.io"\naliases = ["m.a.io"]\ntag_ttl = 0.3333',
        'host = "127.0.0.1:5001"\nurl = "http://127.0.0.1:5001"\ndefault = true\n'
        'connect_timeout = "1h30m"\nread_timeout = 93784.005\nbreaker_cooldown = 0') +
        '[cache]\nmax_size = 1000001\ndir = "/tmp/ \\"q\\" \\u00e9\\t\\u007f"\n'
        'fill_deadline = "1.1s"\n[log]\nlevel = "warning"', env=ENV)
    assert loads(render(c), env={}) == c
    assert loads(render(Config()), env={}) == Config()


def test_render_shows_units_and_redacts_secrets():
    c = loads(upstreams('host = "a.io"\nurl = "https://a.io"\nusername = "me"\n'
                        'password = "hunter2"'), env=ENV)
    text = render(c)
    assert 'max_size = "50GiB"' in text and 'tag_ttl = "5m"' in text
    assert 'fill_deadline = "2h"' in text and 'connect_timeout = "5s"' in text
    assert 'username = "me"' in text and 'password = "***"' in text
    assert "hunter2" not in text
    again = loads(text, env=ENV)
    assert again.upstreams[0].password == "***"
    assert dataclasses.replace(again, upstreams=(c.upstreams[0],)) == c


def test_render_omits_unset_credentials():
    assert "username" not in render(Config()) and "password" not in render(Config())


# --- the example file ---------------------------------------------------------------------

def test_example_config_loads():
    c = load(EXAMPLE, env=ENV)
    hub, ghcr = c.upstreams
    assert hub == DEFAULT_DOCKER_HUB and c.default_upstream is hub
    assert (ghcr.host, ghcr.url, ghcr.tag_ttl) == ("ghcr.io", "https://ghcr.io", 10 * MINUTES)
    assert dataclasses.replace(c, upstreams=(DEFAULT_DOCKER_HUB,)) == loads("", env=ENV)


def test_example_config_documents_every_key():
    text = EXAMPLE.read_text()
    for cls in (cfg.ServerConfig, cfg.CacheConfig, cfg.LogConfig, UpstreamConfig,
                cfg.EcrBackingConfig, cfg.AccessConfig):
        for f in dataclasses.fields(cls):
            assert re.search(rf"^#? ?{f.name} = ", text, re.M), f.name


def test_ecr_upstream_and_backing_tier():
    c = loads("""
[[upstream]]
host = "123456789012.dkr.ecr.eu-west-2.amazonaws.com"
url = "https://123456789012.dkr.ecr.eu-west-2.amazonaws.com"
auth = "ecr"

[backing.ecr]
enabled = true
region = "eu-west-2"
registry_id = "123456789012"
repository_prefix = "pullcache"
""", env=ENV)
    up = c.upstreams[0]
    assert (up.auth, up.ecr_region, up.ecr_registry_id) == ("ecr", "eu-west-2", "123456789012")
    assert c.backing_ecr.enabled and c.backing_ecr.write_concurrency == 4
    assert c.backing_ecr.data_plane == "https://123456789012.dkr.ecr.eu-west-2.amazonaws.com"
    assert loads(render(c), env=ENV) == c
    env = {**ENV, "PULLCACHE_BACKING_ECR_WRITE_CONCURRENCY": "9"}
    assert loads(render(c), env=env).backing_ecr.write_concurrency == 9
    with pytest.raises(ConfigError, match=r"^backing\.ecr\.region: required when enabled"):
        loads("[backing.ecr]\nenabled = true", env=ENV)
    with pytest.raises(ConfigError, match=r"^backing\.gcs: unknown key"):
        loads("[backing.gcs]\nenabled = true", env=ENV)
    with pytest.raises(ConfigError, match=r"^backing\.ecr\.bucket: unknown key"):
        loads("[backing.ecr]\nbucket = 'x'", env=ENV)


def test_admin_token_and_handshake_timeout():
    c = loads('[server]\nadmin_token = "0123456789abcdef0123"\nhandshake_timeout = "2s"\n',
              env=ENV)
    assert c.server.admin_token == "0123456789abcdef0123" and c.server.handshake_timeout == 2
    assert loads("", env=ENV).server.handshake_timeout == 10
    assert loads("", env=ENV).server.admin_token is None
    assert 'admin_token = "***"' in render(c) and "0123456789abcdef" not in render(c)
    for bad in ('"short"', '"has a space in it, long enough"', "12345678901234567"):
        message = error(f"[server]\nadmin_token = {bad}\n")
        assert message.startswith("server.admin_token: expected"), message
        assert "short" not in message and "space" not in message   # never echoed
    assert error('[server]\nhandshake_timeout = 0\n').startswith(
        "server.handshake_timeout: must be greater than zero")


def test_s3_backing_tier():
    text = """
[backing.s3]
enabled = true
bucket = "fleet-cache"
prefix = "/pullcache/prod/"
endpoint_url = "http://127.0.0.1:9000"
addressing_style = "path"
access_key_id = "AKIAEXAMPLE"
secret_access_key = "wJalrXUtnFEMI-secret"
server_side_encryption = "aws:kms"
kms_key = "alias/pullcache"
storage_class = "INTELLIGENT_TIERING"
part_size = "16MiB"
"""
    c = loads(text, env=ENV)
    s3 = c.backing_s3
    assert (s3.bucket, s3.prefix, s3.part_size) == ("fleet-cache", "pullcache/prod", 16 << 20)
    assert s3.addressing_style == "path" and s3.region is None
    rendered = render(c)
    # The keys never leave: not rendered, not in a repr (a log line, a traceback).
    assert "AKIAEXAMPLE" not in rendered and "wJalrXUtnFEMI-secret" not in rendered
    assert 'secret_access_key = "***"' in rendered
    assert "wJalrXUtnFEMI-secret" not in repr(c) and "AKIAEXAMPLE" not in repr(s3)
    env = {**ENV, "PULLCACHE_BACKING_S3_BUCKET": "other-bucket",
           "PULLCACHE_BACKING_S3_ADDRESSING_STYLE": "virtual"}
    assert (loads(text, env=env).backing_s3.bucket,
            loads(text, env=env).backing_s3.addressing_style) == ("other-bucket", "virtual")
    for bad, message in [
            ("bucket = 'Bad_Bucket'", r"backing\.s3\.bucket: not a valid bucket name"),
            ("bucket = 'b-1'\nregion = 'r'\nkms_key = 'k'",
             r"backing\.s3\.kms_key: only with server_side_encryption"),
            ("bucket = 'b-1'\nregion = 'r'\naccess_key_id = 'a'",
             r"backing\.s3\.access_key_id: give both"),
            ("bucket = 'b-1'\nregion = 'r'\npart_size = '5MiB'",
             r"backing\.s3\.part_size: between 8MiB and 64MiB"),
            ("bucket = 'b-1'", r"backing\.s3\.region: required when enabled"),
            ("region = 'r'", r"backing\.s3\.bucket: required when enabled"),
            ("bucket = 'b-1'\nregion = 'r'\nserver_side_encryption = 'KMS'",
             r"backing\.s3\.server_side_encryption: expected one of")]:
        with pytest.raises(ConfigError, match="^" + message):
            loads(f"[backing.s3]\nenabled = true\n{bad}", env=ENV)
    both = ("[backing.s3]\nenabled = true\nbucket = 'b-1'\nregion = 'r'\n"
            "[backing.ecr]\nenabled = true\nregion = 'r'\nregistry_id = '1'")
    with pytest.raises(ConfigError, match=r"^backing\.s3\.enabled: .*at most one tier"):
        loads(both, env=ENV)
