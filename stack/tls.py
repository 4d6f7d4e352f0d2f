"""A private certificate authority for one server: mutual TLS on loopback.

`make_mtls(folder)` makes a CA, signs one certificate for 127.0.0.1 that serves as both the
server's and its clients' certificate, and forgets the CA's key: nobody (us included) can issue
another certificate that the server would accept. Whoever can read `key.pem` (0600) can talk to
the server; nobody else can even complete a TLS handshake with it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from stack.process import write_secret


def make_mtls(folder: Path, name: str) -> dict[str, str]:
    """Write `ca.pem`, `cert.pem` and `key.pem` (EC P-256, ten years) under `folder`; returns
    their paths by name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    valid = {"not_valid_before": now - dt.timedelta(minutes=5),
             "not_valid_after": now + dt.timedelta(days=3650)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name,
                                  public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder(
                subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
                issuer_name=ca_name, public_key=key.public_key(),
                serial_number=x509.random_serial_number(), **valid)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    pem = serialization.Encoding.PEM
    write_secret(paths["ca"], ca.public_bytes(pem).decode())
    write_secret(paths["cert"], cert.public_bytes(pem).decode())
    write_secret(paths["key"], key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()).decode())
    return {k: str(v) for k, v in paths.items()}


def client_context(paths: dict[str, str]) -> ssl.SSLContext:
    """An SSL context that trusts only the private CA and presents the client certificate."""
    ctx = ssl.create_default_context(cafile=paths["ca"])
    ctx.load_cert_chain(paths["cert"], paths["key"])
    return ctx
