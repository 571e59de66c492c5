"""Real X.509 material for TLS tests, made with ``cryptography``: a CA, server certificates
for 127.0.0.1/localhost, and client certificates for mTLS; plus htpasswd files."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Issued:
    cert: Path
    key: Path


class CA:
    """A certificate authority in ``directory`` (``ca.crt``)."""

    def __init__(self, directory: Path, name: str = "pullcache-test-ca") -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.name = _name(name)
        self.certificate = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256()))
        self.cert = _write(directory / "ca.crt",
                           self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, server: bool = True, client: bool = False) -> Issued:
        """A leaf certificate: for 127.0.0.1, ::1 and localhost (server), or a client; both
        (a cluster member, which answers and asks) with ``server`` and ``client``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(self.name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
                + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client or not server else [])),
                critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        pem = cert.public_bytes(serialization.Encoding.PEM)
        return Issued(_write(self.dir / f"{name}.crt", pem),
                      _write(self.dir / f"{name}.key", _key_pem(key)))

    def server_context(self, name: str = "upstream") -> ssl.SSLContext:
        """A server's context presenting a leaf issued for ``name`` (asks no client cert)."""
        leaf = self.issue(name)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(leaf.cert, leaf.key)
        return ctx

    def client_context(self, client: Issued | None = None) -> ssl.SSLContext:
        """What a well-configured client uses: this CA trusted, hostnames checked."""
        ctx = ssl.create_default_context(cafile=str(self.cert))
        if client is not None:
            ctx.load_cert_chain(client.cert, client.key)
        return ctx


def write_htpasswd(path: Path, users: dict[str, str], *, apache: bool = True) -> Path:
    """bcrypt entries; with ``apache`` (and the tool installed) written by ``htpasswd -B``
    itself, so the test reads exactly what operators make."""
    lines = []
    for user, password in users.items():
        if apache:
            try:
                out = subprocess.run(["htpasswd", "-nbB", "-C", "5", user, password],
                                     capture_output=True, text=True, check=True).stdout
                lines.append(out.strip())
                continue
            except (OSError, subprocess.CalledProcessError):
                pass
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
        lines.append(f"{user}:{hashed}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)   # atomic, as an operator's tooling should do it
    return path
