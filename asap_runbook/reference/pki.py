"""Local PKI for the reference deployment, built with ``cryptography``.

* a local CA (ECDSA P-256, 2 years) and a leaf for ``127.0.0.1`` + ``localhost``
  (SAN IP and DNS, 90 days, serverAuth) signed by it, for the hardened nginx;
* a *self-signed* RSA leaf for ``127.0.0.1`` that has already expired, for the weak nginx.

``trustme`` is deliberately not used: its certificates live ~1000 years and a
certificate-lifespan check would flag them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LEAF_VALIDITY_DAYS = 90


@dataclass(frozen=True)
class PKIFiles:
    ca_file: Path  # CA certificate (PEM); give it to clients as the trust anchor
    cert_chain: Path  # hardened leaf + CA (PEM)
    cert_key: Path  # hardened leaf key (PEM, 0600)
    weak_cert: Path  # expired self-signed leaf (PEM)
    weak_key: Path  # its key (PEM, 0600)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "asap-runbook reference"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write_key(path: Path, key) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


@dataclass(frozen=True)
class Issuer:
    """A CA that can sign leaves (make_ca)."""

    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def make_ca(cn: str = "asap-runbook reference local CA", days: int = 730) -> Issuer:
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issuer(name, key, cert)


def make_leaf(cert_file: Path, key_file: Path, hosts: list[str] | tuple[str, ...], *, issuer: Issuer | None,
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
              rsa_key: bool = False) -> None:
    """Write a server certificate for `hosts` (SAN IP/DNS) and its key (0600). Signed by `issuer`
    (the file then holds leaf + CA, as a server sends its chain), or self-signed when None.
    Default validity: from 5 minutes ago for LEAF_VALIDITY_DAYS (real-looking: under 398 days)."""
    now = dt.datetime.now(dt.timezone.utc)
    not_before = not_before or now - dt.timedelta(minutes=5)
    not_after = not_after or not_before + dt.timedelta(days=LEAF_VALIDITY_DAYS)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if rsa_key else ec.generate_private_key(ec.SECP256R1())
    subject = _name(hosts[0])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.name if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_san(list(hosts)), critical=False)
    )
    if issuer is not None:
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    cert_file.write_bytes(_pem(cert) + (_pem(issuer.cert) if issuer else b""))
    _write_key(key_file, key)


def make_pki(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> PKIFiles:
    """Create the CA, the hardened leaf and the weak (expired, self-signed) leaf in *directory*."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    files = PKIFiles(
        ca_file=directory / "ca.pem",
        cert_chain=directory / "hardened-chain.pem",
        cert_key=directory / "hardened-key.pem",
        weak_cert=directory / "weak-selfsigned-expired.pem",
        weak_key=directory / "weak-key.pem",
    )
    ca = make_ca()
    files.ca_file.write_bytes(_pem(ca.cert))
    make_leaf(files.cert_chain, files.cert_key, hosts, issuer=ca)  # hardened: CA-issued, 90 days
    # weak: self-signed RSA, expired 30 days ago
    make_leaf(files.weak_cert, files.weak_key, ["127.0.0.1"], issuer=None, rsa_key=True,
              not_before=now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=30))
    return files
