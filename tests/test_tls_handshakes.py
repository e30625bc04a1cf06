"""SEC-TLS-2's look at a certificate, counted on a local TLS server: one handshake when the chain verifies
(the leaf is read from it), a second, unverified one only when it does not (to read the leaf it refused)."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from asap_runbook import _tls
from asap_runbook.reference import pki


class CountingTLSServer:
    """Accepts TLS connections with `cert`/`key` and counts them."""

    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    def close(self):
        self.listener.close()


@pytest.mark.parametrize("signed_by_ca, handshakes", [(True, 1), (False, 2)])
def test_a_verifying_certificate_costs_one_handshake(tmp_path, signed_by_ca, handshakes):
    ca = pki.make_ca("asap-runbook test CA")
    (tmp_path / "ca.pem").write_bytes(ca.cert.public_bytes(Encoding.PEM))
    pki.make_leaf(tmp_path / "cert.pem", tmp_path / "key.pem", ["127.0.0.1"], issuer=ca if signed_by_ca else None)
    server = CountingTLSServer(tmp_path / "cert.pem", tmp_path / "key.pem")
    try:
        rep = _tls.certificate(f"https://127.0.0.1:{server.port}", tmp_path / "ca.pem", 5)
    finally:
        server.close()
    assert server.accepted == handshakes
    assert rep.verified is signed_by_ca and rep.self_signed is (not signed_by_ca) and rep.hostname_ok
    assert rep.subject and rep.not_after
