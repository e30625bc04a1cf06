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


def make_pki(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> PKIFiles:
    """Create the CA, the hardened leaf and the weak (expired, self-signed) leaf in *directory*."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    # --- CA -----------------------------------------------------------------------------
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("asap-runbook reference local CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=730))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    # --- hardened leaf (CA-issued, 90 days) ----------------------------------------------
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_VALIDITY_DAYS))
        .add_extension(_san(list(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    # --- weak leaf: self-signed, expired --------------------------------------------------
    weak_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    weak_name = _name("127.0.0.1")
    weak_cert = (
        x509.CertificateBuilder()
        .subject_name(weak_name)
        .issuer_name(weak_name)
        .public_key(weak_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now - dt.timedelta(days=30))
        .add_extension(_san(["127.0.0.1"]), critical=False)
        .sign(weak_key, hashes.SHA256())
    )

    files = PKIFiles(
        ca_file=directory / "ca.pem",
        cert_chain=directory / "hardened-chain.pem",
        cert_key=directory / "hardened-key.pem",
        weak_cert=directory / "weak-selfsigned-expired.pem",
        weak_key=directory / "weak-key.pem",
    )
    files.ca_file.write_bytes(_pem(ca_cert))
    files.cert_chain.write_bytes(_pem(leaf_cert) + _pem(ca_cert))
    _write_key(files.cert_key, leaf_key)
    files.weak_cert.write_bytes(_pem(weak_cert))
    _write_key(files.weak_key, weak_key)
    return files
