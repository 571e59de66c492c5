"""mTLS between members (``[cluster] tls_cert``, ``tls_key``, ``tls_ca``): every member holds
a certificate signed by the cluster's own CA, presents it when it asks, and asks for one
when it answers.

Members are reached by the addresses DNS or the peer list gives (pod IPs in Kubernetes),
which certificates seldom name: the peer's certificate is verified against ``tls_ca`` but
its name is not checked. Holding a certificate of that CA is what makes a member, so the
CA must sign nothing else.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import ConfigError


def _load(ctx: ssl.SSLContext, cert: Path, key: Path, ca: Path,
          verify: ssl.VerifyMode = ssl.CERT_REQUIRED) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cluster.tls_cert/tls_key/tls_ca: cannot load {cert}, {key} and "
                          f"{ca}: {exc}") from None
    ctx.verify_mode = verify
    return ctx


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The peer listener's: a client certificate, when one is presented, must be signed by
    ``ca`` (else the handshake fails). One is asked for, not required, so that a request
    without one is answered 401 by the peer routes (``server/peers.py``), not cut."""
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, ca, ssl.CERT_OPTIONAL)


def client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """This node's, asking a peer: our certificate; theirs verified against ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False    # before CERT_REQUIRED is set again by _load
    return _load(ctx, cert, key, ca)
