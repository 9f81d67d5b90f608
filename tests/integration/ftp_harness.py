"""pyftpdlib as the upstream FTP server, in a thread of the test process."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import ThreadedFTPServer

USER, PASSWORD = "alice", "s3cret-Pa55"


class FtpUpstream:
    """A real FTP server on loopback with one user whose home is ``root``."""

    def __init__(
        self, root: Path, host: str = "127.0.0.1", tls: tuple[Path, Path] | None = None
    ) -> None:
        logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
        authorizer = DummyAuthorizer()
        authorizer.add_user(USER, PASSWORD, str(root), perm="elradfmwMT")
        authorizer.add_user("PARTNER1", "partner-pw", str(root), perm="elradfmwMT")
        base: type[FTPHandler] = FTPHandler
        if tls is not None:  # an FTPS upstream (explicit, AUTH TLS), as an IBM i can be
            from pyftpdlib.handlers import TLS_FTPHandler

            base = TLS_FTPHandler
        handler = type("Handler", (base,), {})
        if tls is not None:
            handler.certfile, handler.keyfile = str(tls[0]), str(tls[1])
        handler.authorizer = authorizer
        handler.banner = "upstream FTP ready"
        handler.permit_foreign_addresses = False
        self.logins: list[str] = []
        self.users_seen: list[str] = []  # every USER argument that reached the upstream
        outer = self

        def on_login(self: FTPHandler, username: str) -> None:
            outer.logins.append(username)

        def ftp_USER(self: FTPHandler, line: str) -> None:
            outer.users_seen.append(line)
            base.ftp_USER(self, line)

        handler.on_login = on_login
        handler.ftp_USER = ftp_USER
        self.server = ThreadedFTPServer((host, 0), handler)
        self.host = host
        self.port = self.server.address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"timeout": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        self.server.close_all()
        self.thread.join(5)


def make_certificate(folder: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate and key for ``name`` (and 127.0.0.1), as PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    alt = x509.SubjectAlternativeName(
        [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(alt, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
