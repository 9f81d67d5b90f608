"""tls: terminate — TLS ends at gatekeeper; the upstream is spoken to in plain or in TLS."""

from __future__ import annotations

import ftplib
import hashlib
import io
import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ftp_harness import PASSWORD, USER, FtpUpstream, make_certificate
from tests.integration.harness import Daemon
from tests.integration.test_ftp import RULES, ftp_listener
from tests.integration.test_gate import sessions


def tls_client(d: Daemon, ca: Path) -> ftplib.FTP_TLS:
    context = ssl.create_default_context(cafile=str(ca))
    ftp = ftplib.FTP_TLS(context=context, timeout=10)
    ftp.connect("127.0.0.1", d.address("ftp")[1])
    ftp.auth()  # AUTH TLS, answered by gatekeeper
    ftp.login(USER, PASSWORD)
    ftp.prot_p()  # PBSZ 0 + PROT P: data connections in TLS too
    return ftp


@pytest.mark.parametrize("upstream_tls", [False, True], ids=["upstream-plain", "upstream-tls"])
@pytest.mark.parametrize("passive", [True, False], ids=["PASV", "PORT"])
def test_tls_terminate(
    daemon, root: Path, tmp_path: Path, upstream_tls: bool, passive: bool
) -> None:
    cert, key = make_certificate(tmp_path / "gk")
    upstream_cert = make_certificate(tmp_path / "ibmi") if upstream_tls else None
    upstream = FtpUpstream(root, tls=upstream_cert)
    try:
        tls: dict[str, Any] = {"mode": "terminate", "certificate": str(cert), "key": str(key)}
        if upstream_cert is not None:  # verified against its own (self-signed) certificate
            tls |= {"upstream": "tls", "upstream_ca": str(upstream_cert[0])}
        listener = ftp_listener(upstream, tls=tls)
        listener["upstream"] = f"localhost:{upstream.port}"  # the name its certificate carries
        d = daemon({"listeners": [listener]}, RULES).start()
        ftp = tls_client(d, cert)
        ftp.set_pasv(passive)
        got = io.BytesIO()
        ftp.retrbinary("RETR big.bin", got.write)
        assert (
            hashlib.sha256(got.getvalue()).digest()
            == hashlib.sha256((root / "big.bin").read_bytes()).digest()
        )
        ftp.storbinary("STOR tls-up.bin", io.BytesIO(got.getvalue()[:100_000]))
        assert (root / "tls-up.bin").read_bytes() == got.getvalue()[:100_000]
        assert "hello.txt" in ftp.nlst()
        ftp.quit()
        assert d.stop() == 0
        (row,) = sessions(d.database)
        assert row["user"] == "ALICE" and row["files_sent"] == 1 and row["files_received"] == 1
        # ftplib closes without a TLS close_notify after QUIT, as many clients do: an
        # orderly end all the same, not an error.
        assert row["outcome"] == "logged-in"
    finally:
        upstream.close()
