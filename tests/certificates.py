"""Certificates the tests make themselves (trustme): a CA, a server and a client certificate.

`TlsFiles.make(directory)` writes PEM files the server reads (--tls-cert,
--tls-key, --tls-ca) and builds the ssl contexts a client needs, so no test
depends on a certificate checked in or on the machine's CA store.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_NAMES = ("127.0.0.1", "localhost")  # the servers in tests listen on 127.0.0.1


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA's certificate: trusted by clients, and by a server with --tls-ca
    cert: Path  # the server's certificate chain
    key: Path  # the server's private key
    client_cert: Path  # a client certificate signed by the same CA, key included
    other_ca: Path  # a CA that signed none of these

    @classmethod
    def make(cls, directory: Path) -> TlsFiles:
        ca, other = trustme.CA(), trustme.CA()
        server = ca.issue_cert(*SERVER_NAMES)
        client = ca.issue_cert("client@wonderq.test")
        files = cls(ca=directory / "ca.pem", cert=directory / "server.pem",
                    key=directory / "server.key", client_cert=directory / "client.pem",
                    other_ca=directory / "other-ca.pem")
        ca.cert_pem.write_to_path(str(files.ca))
        other.cert_pem.write_to_path(str(files.other_ca))
        for blob in server.cert_chain_pems:
            blob.write_to_path(str(files.cert), append=True)
        server.private_key_pem.write_to_path(str(files.key))
        client.private_key_and_cert_chain_pem.write_to_path(str(files.client_cert))
        return files

    def server_flags(self, *, require_client_cert: bool = False) -> list[str]:
        flags = ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]
        return [*flags, "--tls-ca", str(self.ca)] if require_client_cert else flags

    def client_context(self, *, with_client_cert: bool = False) -> ssl.SSLContext:
        """client_context trusts the test CA (and presents the client certificate if asked)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_client_cert:
            context.load_cert_chain(str(self.client_cert))
        return context
