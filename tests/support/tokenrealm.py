"""A Docker token-auth realm (distribution docs/spec/auth/token.md) for tests.

``TokenRealm`` is a tiny aiohttp app on 127.0.0.1 in a background thread. It signs
JWTs that CNCF Distribution 2.8 accepts when the registry is configured with::

    auth:
      token:
        realm: <realm.token_url>
        service: pullcache-test-registry
        issuer: pullcache-test-issuer
        rootcertbundle: <file holding realm.certificate_pem>

What Distribution 2.8 (registry/auth/token/token.go) requires of a token:

* compact JWS; header ``alg`` ES256/RS256 and ``x5c`` = [base64 (standard, padded)
  DER of the signing cert]; the cert must verify against ``rootcertbundle`` (a
  self-signed cert that *is* the bundle works). ``kid`` is only consulted when
  there is no ``x5c``; we send the libtrust fingerprint anyway.
* ``aud`` must be a JSON *string* equal to the service (a list fails to unmarshal
  and the token is rejected as malformed); ``iss`` must equal the issuer;
  ``exp``/``nbf`` are checked with 60 s leeway.
* ``access`` = [{"type": "repository", "name": repo, "actions": [...]}] grants.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.support._aiothread import ThreadedApp

DEFAULT_SERVICE = "pullcache-test-registry"
DEFAULT_ISSUER = "pullcache-test-issuer"

#: policy(username or None, resource type, resource name, requested actions) -> granted actions
Policy = Callable[[str | None, str, str, list[str]], list[str]]


@dataclass(frozen=True)
class Scope:
    """One ``type:name:actions`` scope, e.g. ``repository:library/alpine:pull,push``."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> "Scope":
        """Parse a scope; the name may itself contain ':' (e.g. a host:port prefix)."""
        type_, sep, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not type_ or not name:
            raise ValueError(f"malformed scope {text!r}")
        return cls(type_, name, tuple(a for a in actions.split(",") if a))


@dataclass
class TokenRequest:
    """What the realm saw and answered for one /token request."""

    method: str
    username: str | None
    service: str | None
    scopes: tuple[str, ...]
    status: int
    granted: list[dict] = field(default_factory=list)
    grant_type: str | None = None


def default_policy(username: str | None, type_: str, name: str, actions: list[str]) -> list[str]:
    """Authenticated users get what they ask for; anonymous users get repository pull only."""
    if username is None:
        return ["pull"] if type_ == "repository" and "pull" in actions else []
    allowed = {"pull", "push", "delete", "*"}
    return [a for a in actions if a in allowed]


def libtrust_key_id(public_key) -> str:
    """The libtrust fingerprint Distribution uses as a JWT ``kid``.

    base32(sha256(DER SubjectPublicKeyInfo)[:30]) without padding, in 12 groups of 4
    separated by ':'.
    """
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


def _make_signing_identity(key_type: str):
    """Return (private key, self-signed CA cert, JWT alg) for ``key_type`` "EC" or "RSA"."""
    if key_type.upper() == "EC":
        key = ec.generate_private_key(ec.SECP256R1())
        alg = "ES256"
    elif key_type.upper() == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        alg = "RS256"
    else:
        raise ValueError(f"key_type must be 'EC' or 'RSA', not {key_type!r}")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pullcache-test-token-signer")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert, alg


def _rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _oci_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"errors": [{"code": code, "message": message}]}, status=status, headers=headers)


class TokenRealm(ThreadedApp):
    """Token server. ``GET|POST {url}/token``; see the module docstring for the JWT shape.

    * ``users``: username -> password (default ``{"alice": "s3cret"}``); mutable while running.
    * Anonymous requests are served (pull-only by the default policy); a Basic
      ``Authorization`` with an unknown user or wrong password gets 401.
    * ``expires_in``: token lifetime in seconds (default 300); mutable while running.
    * ``requests``: a snapshot list of :class:`TokenRequest`, one per /token request.
    """

    thread_name = "token-realm"

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        expires_in: int = 300,
        service: str = DEFAULT_SERVICE,
        issuer: str = DEFAULT_ISSUER,
        key_type: str = "EC",
        policy: Policy | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(port=port)
        self.users: dict[str, str] = dict(users if users is not None else {"alice": "s3cret"})
        self.expires_in = expires_in
        self.service = service
        self.issuer = issuer
        self.policy: Policy = policy or default_policy
        self._key, self._cert, self.algorithm = _make_signing_identity(key_type)
        self._x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
        self.key_id = libtrust_key_id(self._key.public_key())
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._refresh_tokens: dict[str, str] = {}

    # -- public API ---------------------------------------------------------
    @property
    def token_url(self) -> str:
        """The realm URL to put in the registry config: ``{url}/token``."""
        return self.url + "/token"

    @property
    def certificate_pem(self) -> bytes:
        """PEM of the self-signed signing certificate (the registry's rootcertbundle)."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def public_key(self):
        return self._key.public_key()

    @property
    def requests(self) -> list[TokenRequest]:
        """Snapshot of the /token requests seen so far (oldest first)."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    def reset_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def issue(self, subject: str | None, access: list[dict], *, expires_in: int | None = None,
              issuer: str | None = None, audience: str | None = None) -> str:
        """Sign and return a JWT directly (tests can forge expired/foreign tokens this way)."""
        now = int(time.time())
        lifetime = self.expires_in if expires_in is None else expires_in
        claims = {
            "iss": issuer or self.issuer,
            "sub": subject or "",
            "aud": audience or self.service,  # must be a string for Distribution 2.8
            "exp": now + lifetime,
            "nbf": now,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        headers = {"typ": "JWT", "x5c": [self._x5c], "kid": self.key_id}
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)

    def decode(self, token: str, *, verify_exp: bool = True) -> dict:
        """Verify a token this realm issued and return its claims."""
        return jwt.decode(token, self.public_key, algorithms=[self.algorithm], audience=self.service,
                          issuer=self.issuer, options={"verify_exp": verify_exp})

    def grant(self, username: str | None, scopes: Iterable[str]) -> list[dict]:
        """The ``access`` claim for ``username`` asking for ``scopes`` (malformed scopes are skipped)."""
        access: list[dict] = []
        for text in scopes:
            try:
                scope = Scope.parse(text)
            except ValueError:
                continue
            actions = self.policy(username, scope.type, scope.name, list(scope.actions))
            if actions:
                access.append({"type": scope.type, "name": scope.name, "actions": actions})
        return access

    # -- server -------------------------------------------------------------
    async def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self._handle_get)
        app.router.add_post("/token", self._handle_post)
        return app

    def _record(self, req: TokenRequest) -> None:
        with self._lock:
            self._requests.append(req)

    def _check_password(self, username: str, password: str) -> bool:
        expected = self.users.get(username)
        return expected is not None and secrets.compare_digest(expected, password)

    def _token_response(self, username: str | None, access: list[dict], *, offline: bool,
                        scopes: tuple[str, ...]) -> web.Response:
        expires_in = self.expires_in
        now = time.time()
        token = self.issue(username, access, expires_in=expires_in)
        body = {"token": token, "access_token": token, "expires_in": expires_in, "issued_at": _rfc3339(now)}
        if scopes:
            body["scope"] = " ".join(scopes)
        if offline and username is not None:
            refresh = secrets.token_urlsafe(24)
            with self._lock:
                self._refresh_tokens[refresh] = username
            body["refresh_token"] = refresh
        return web.json_response(body)

    @staticmethod
    def _split_scopes(values: Iterable[str]) -> tuple[str, ...]:
        return tuple(s for v in values for s in v.split(" ") if s)

    def _basic_credentials(self, request: web.Request) -> tuple[str, str] | None | bool:
        """(user, password) from a Basic Authorization header, None if absent, False if garbled."""
        header = request.headers.get("Authorization")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (user, password) if sep else False

    def _service_error(self, service: str | None) -> web.Response | None:
        if service is not None and service != self.service:
            return _oci_error(400, "UNSUPPORTED", f"unknown service {service!r}")
        return None

    async def _handle_get(self, request: web.Request) -> web.Response:
        service = request.query.get("service")
        scopes = self._split_scopes(request.query.getall("scope", []))
        record = TokenRequest("GET", None, service, scopes, 200)
        try:
            if (err := self._service_error(service)) is not None:
                record.status = err.status
                return err
            creds = self._basic_credentials(request)
            if creds is not None:
                if creds is False or not self._check_password(*creds):
                    record.status = 401
                    record.username = creds[0] if creds else None
                    return _oci_error(401, "UNAUTHORIZED", "invalid username or password",
                                      {"WWW-Authenticate": 'Basic realm="pullcache-test-token-realm"'})
                record.username = creds[0]
            record.granted = self.grant(record.username, scopes)
            offline = request.query.get("offline_token", "").lower() == "true"
            return self._token_response(record.username, record.granted, offline=offline, scopes=scopes)
        finally:
            self._record(record)

    async def _handle_post(self, request: web.Request) -> web.Response:
        form = await request.post()
        service = form.get("service")
        scopes = self._split_scopes(str(v) for v in form.getall("scope", []))
        grant_type = str(form.get("grant_type", ""))
        record = TokenRequest("POST", None, service if service is None else str(service), scopes, 200,
                              grant_type=grant_type)
        try:
            if (err := self._service_error(record.service)) is not None:
                record.status = err.status
                return err
            if grant_type == "password":
                username, password = str(form.get("username", "")), str(form.get("password", ""))
                record.username = username
                if not self._check_password(username, password):
                    record.status = 401
                    return _oci_error(401, "UNAUTHORIZED", "invalid username or password")
            elif grant_type == "refresh_token":
                with self._lock:
                    username = self._refresh_tokens.get(str(form.get("refresh_token", "")))
                if username is None:
                    record.status = 401
                    return _oci_error(401, "UNAUTHORIZED", "invalid refresh token")
                record.username = username
            else:
                record.status = 400
                return _oci_error(400, "UNSUPPORTED", f"unsupported grant_type {grant_type!r}")
            record.granted = self.grant(record.username, scopes)
            offline = str(form.get("access_type", "")) == "offline"
            return self._token_response(record.username, record.granted, offline=offline, scopes=scopes)
        finally:
            self._record(record)
