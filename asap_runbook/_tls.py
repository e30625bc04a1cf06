"""TLS probing with Python's ssl: which protocol versions a server accepts, and its certificate.

Python's ssl can only offer what the local OpenSSL build and crypto policy allow. A refused
TLS 1.0 handshake says nothing about the server when this machine cannot speak TLS 1.0 at all,
so before a refusal is trusted, :func:`client_capabilities` proves the client can complete a
handshake at each version against a throw-away local server (once per process).
(sslyze would do this with its own OpenSSL, but cannot be installed beside asap-protocol:
their `cryptography` pins conflict.)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .probe import file_version

VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLSv1.0": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _pinned_context(version: ssl.TLSVersion, *, server: bool = False) -> ssl.SSLContext:
    """A context that offers exactly one protocol version, with every cipher OpenSSL has."""
    with warnings.catch_warnings():  # TLSv1/TLSv1_1 are deprecated names; pinning them is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        if not server:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        try:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        except ssl.SSLError:
            pass
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


@dataclass
class Handshake:
    version: str
    ok: bool
    negotiated: str | None = None
    cipher: str | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@lru_cache(maxsize=len(VERSIONS))
def _pinned_client_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    """Built once per process: a fleet made four per target. Shared, so not mutated (wrap_socket does not)."""
    return _pinned_context(version)


def handshake(host: str, port: int, version: str, timeout: float) -> Handshake:
    """One handshake pinned to `version`; never raises."""
    try:
        ctx = _pinned_client_context(VERSIONS[version])
    except (ValueError, ssl.SSLError) as e:
        return Handshake(version, False, error=f"this client cannot pin {version}: {e}")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=host if not _is_ip(host) else None) as tls:
                cipher = tls.cipher()
                return Handshake(version, True, tls.version(), cipher[0] if cipher else None)
    except ssl.SSLError as e:
        return Handshake(version, False, error=f"{e.reason or type(e).__name__}")
    except (OSError, socket.timeout) as e:
        return Handshake(version, False, error=f"{type(e).__name__}: {e}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _self_signed(cn: str = "127.0.0.1") -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1)).sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@lru_cache(maxsize=1)
def client_capabilities(timeout: float = 3.0) -> dict[str, Handshake]:
    """Which versions this machine's OpenSSL can complete, proven against a local server (cached)."""
    cert_pem, key_pem = _self_signed()
    out: dict[str, Handshake] = {}
    with tempfile.TemporaryDirectory(prefix="asap-runbook-tls-") as d:
        cert_file, key_file = Path(d) / "cert.pem", Path(d) / "key.pem"
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        for name, version in VERSIONS.items():
            try:
                server_ctx = _pinned_context(version, server=True)
                server_ctx.load_cert_chain(cert_file, key_file)
            except (ValueError, ssl.SSLError) as e:
                out[name] = Handshake(name, False, error=f"local OpenSSL refuses to serve {name}: {e}")
                continue
            out[name] = _self_test_one(server_ctx, name, timeout)
    return out


def _self_test_one(server_ctx: ssl.SSLContext, name: str, timeout: float) -> Handshake:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(timeout)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(timeout)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        return handshake("127.0.0.1", port, name, timeout)
    finally:
        t.join(timeout)
        listener.close()


# ---------------------------------------------------------------- certificate

@dataclass
class CertReport:
    verified: bool
    verify_error: str | None
    subject: str | None = None
    issuer: str | None = None
    self_signed: bool | None = None
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    hostname_ok: bool | None = None
    sans: list[str] = field(default_factory=list)
    chain_sent: int | None = None

    @property
    def lifetime_days(self) -> float | None:
        if self.not_before and self.not_after:
            return (self.not_after - self.not_before).total_seconds() / 86400
        return None

    def days_left(self, now: dt.datetime | None = None) -> float | None:
        if not self.not_after:
            return None
        return (self.not_after - (now or dt.datetime.now(dt.UTC))).total_seconds() / 86400

    def as_dict(self) -> dict:
        return {
            "verified": self.verified, "verify_error": self.verify_error, "subject": self.subject,
            "issuer": self.issuer, "self_signed": self.self_signed,
            "not_before": self.not_before.isoformat() if self.not_before else None,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "lifetime_days": round(self.lifetime_days, 1) if self.lifetime_days is not None else None,
            "days_left": round(self.days_left(), 1) if self.not_after else None,
            "hostname_matches": self.hostname_ok, "subject_alt_names": self.sans,
        }


def _fetch_leaf(host: str, port: int, timeout: float) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with ctx.wrap_socket(sock, server_hostname=None if _is_ip(host) else host) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the server sent no certificate")
    return der


@lru_cache(maxsize=32)
def _verify_context(ca_file: str | None, _version: tuple | None) -> ssl.SSLContext:
    """The verifying context for a CA file (or the system trust store), built once per process and file
    version: loading the system store costs ~50 ms of CPU, which one context per target made a fleet pay
    per target. Shared, so not mutated (wrap_socket does not)."""
    return ssl.create_default_context(cafile=ca_file)


def _verify(host: str, port: int, ca_file: Path | None, timeout: float) -> tuple[str | None, bytes | None]:
    """(None, the leaf) when the chain and the hostname verify, else (OpenSSL's reason, None)."""
    ca = str(ca_file) if ca_file else None
    ctx = _verify_context(ca, file_version(ca))
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=host) as tls:
                return None, tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as e:
        return e.verify_message or str(e), None
    except ssl.SSLError as e:
        return e.reason or str(e), None


def _hostname_matches(cert: x509.Certificate, host: str) -> tuple[bool, list[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)] if san else []
    ips = [str(i) for i in san.get_values_for_type(x509.IPAddress)] if san else []
    if _is_ip(host):
        return ipaddress.ip_address(host) in [ipaddress.ip_address(i) for i in ips], names + ips
    h = host.lower().rstrip(".")
    for n in names:
        n = n.lower().rstrip(".")
        if n == h or (n.startswith("*.") and "." in h and h.split(".", 1)[1] == n[2:]):
            return True, names + ips
    return False, names + ips


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
        return True
    except Exception:  # noqa: BLE001 - wrong signature or unsupported key: not self-signed
        return False


def certificate(url: str, ca_file: Path | None, timeout: float) -> CertReport:
    """Verify the chain and the hostname; the leaf is read from that handshake, or, when it does not
    verify, from a second one that does not verify; raises OSError if unreachable."""
    host, port = host_port(url)
    verify_error, der = _verify(host, port, ca_file, timeout)
    if der is None:
        der = _fetch_leaf(host, port, timeout)
    cert = x509.load_der_x509_certificate(der)
    ok, sans = _hostname_matches(cert, host)
    return CertReport(
        verified=verify_error is None, verify_error=verify_error,
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
        self_signed=_is_self_signed(cert), not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        hostname_ok=ok, sans=sans,
    )
