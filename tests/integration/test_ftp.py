"""FTP through the gate with real peers: pyftpdlib upstream, ftplib and curl clients."""

from __future__ import annotations

import ftplib
import hashlib
import io
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import BIG
from tests.integration.ftp_harness import PASSWORD, USER, FtpUpstream
from tests.integration.harness import Daemon, free_port, read_until_closed, wait_for
from tests.integration.test_gate import entries, report, sessions

RULES: dict[str, Any] = {
    "default": "deny",
    "allow": ["127.0.0.0/8", "::1"],
    "ftp": {
        "deny_users": ["ADMIN", "ADMINISTRA*", "TEST*", "ROOT"],
        "users": {"PARTNER1": {"commands": ["RETR", "LIST", "NLST", "CWD", "PWD"]}},
        "ban": {"after": 3, "within": "10m", "for": "1h"},
    },
}


@pytest.fixture
def ftp_upstream(root: Path) -> Iterator[FtpUpstream]:
    server = FtpUpstream(root)
    yield server
    server.close()


def ftp_listener(
    upstream: FtpUpstream, listen: str = "127.0.0.1:0", **extra: Any
) -> dict[str, Any]:
    first = free_port()
    item = {"name": "ftp", "protocol": "ftp", "listen": listen, "upstream": upstream.address,
            "passive_ports": f"{first}-{first + 19}"}  # fmt: skip
    item.update(extra)
    return item


@pytest.fixture
def gate(daemon, ftp_upstream: FtpUpstream) -> Daemon:
    return daemon({"listeners": [ftp_listener(ftp_upstream)]}, RULES).start()


def client(d: Daemon, *, passive: bool = True, host: str = "127.0.0.1") -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=10)
    ftp.connect(host, d.address("ftp")[1])
    ftp.set_pasv(passive)
    return ftp


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("passive", [True, False], ids=["PASV", "PORT"])
def test_ftplib_download_upload_listing(gate: Daemon, root: Path, passive: bool) -> None:
    ftp = client(gate, passive=passive)
    assert ftp.getwelcome() == "220 upstream FTP ready"
    ftp.login(USER, PASSWORD)
    got = io.BytesIO()
    ftp.retrbinary("RETR big.bin", got.write)
    assert sha(got.getvalue()) == sha((root / "big.bin").read_bytes())
    ftp.storbinary("STOR up.bin", io.BytesIO(got.getvalue()))
    assert sha((root / "up.bin").read_bytes()) == sha(got.getvalue())
    assert sorted(ftp.nlst()) == ["big.bin", "hello.txt", "up.bin"]
    lines: list[str] = []
    ftp.retrlines("LIST", lines.append)
    assert any(line.endswith("hello.txt") for line in lines)
    ftp.quit()
    assert gate.stop() == 0
    (row,) = sessions(gate.database)
    assert row["user"] == USER.upper() and row["outcome"] == "logged-in"
    assert row["files_sent"] == 1 and row["files_received"] == 1
    assert row["bytes_down"] > BIG and row["bytes_up"] > BIG


@pytest.mark.parametrize(
    "mode", [[], ["--disable-epsv"], ["-P", "-"], ["-P", "-", "--disable-eprt"]],
    ids=["EPSV", "PASV", "EPRT", "PORT"],
)  # fmt: skip
def test_curl_every_mode(gate: Daemon, root: Path, tmp_path: Path, mode: list[str]) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed (make test installs it)")
    url = f"ftp://127.0.0.1:{gate.address('ftp')[1]}/"
    auth = ["--user", f"{USER}:{PASSWORD}"]
    out = tmp_path / "down.bin"
    run = ["curl", "--silent", "--show-error", "--max-time", "30", *auth, *mode]
    subprocess.run([*run, "-o", str(out), url + "big.bin"], check=True)
    assert sha(out.read_bytes()) == sha((root / "big.bin").read_bytes())
    subprocess.run([*run, "-T", str(out), url + "curl-up.bin"], check=True)
    assert sha((root / "curl-up.bin").read_bytes()) == sha(out.read_bytes())
    listing = subprocess.run([*run, "--list-only", url], check=True, capture_output=True, text=True)
    assert "hello.txt" in listing.stdout.split()


def test_ipv6_client_to_ipv4_upstream(daemon, ftp_upstream: FtpUpstream, root: Path) -> None:
    d = daemon({"listeners": [ftp_listener(ftp_upstream, listen="[::1]:0")]}, RULES).start()
    for passive in (True, False):  # EPSV and EPRT: ftplib uses them on IPv6
        ftp = client(d, passive=passive, host="::1")
        ftp.login(USER, PASSWORD)
        got = io.BytesIO()
        ftp.retrbinary("RETR hello.txt", got.write)
        assert got.getvalue() == (root / "hello.txt").read_bytes()
        ftp.quit()
    assert d.stop() == 0


def test_denied_user_never_reaches_upstream(gate: Daemon, ftp_upstream: FtpUpstream) -> None:
    for name in ("admin", "Administrator", "TEST1"):
        ftp = client(gate)
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.sendcmd(f"USER {name}")
        assert ftp.sock.recv(100) == b""  # and the control connection is closed
        ftp.close()
    assert ftp_upstream.users_seen == []
    assert gate.stop() == 0
    got = entries(report(gate, "--level", "detail"))
    assert got[("ftp", "127.0.0.1")]["reason"] in ("user", "ban")


def test_failed_logins_ban_the_address(daemon, ftp_upstream: FtpUpstream) -> None:
    d = daemon({"listeners": [ftp_listener(ftp_upstream)]}, RULES).start()
    for _ in range(3):
        ftp = client(d)
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.login(USER, "wrong-password")
        ftp.close()
    # The third failure banned 127.0.0.1: the next connection is refused at accept.
    with socket.create_connection(d.address("ftp")) as s:
        assert read_until_closed(s).startswith(b"421 ")
    assert d.stop() == 0

    # The ban survives a restart, is listed, and lifted in the running daemon.
    d.start()
    with socket.create_connection(d.address("ftp")) as s:
        assert read_until_closed(s).startswith(b"421 ")
    cfg = ["-c", str(d.config_path)]
    gk = [sys.executable, "-m", "gatekeeper", "bans"]
    listed = subprocess.run([*gk, "list", *cfg], capture_output=True, text=True)
    assert "127.0.0.1" in listed.stdout
    lifted = subprocess.run([*gk, "lift", "127.0.0.1", *cfg], capture_output=True, text=True)
    assert lifted.returncode == 0, lifted.stderr

    def welcome() -> bool:
        with socket.create_connection(d.address("ftp")) as s:
            return s.recv(100).startswith(b"220 ")

    wait_for(welcome, timeout=5, what="the lifted ban to take effect")
    assert d.stop() == 0
    rows = sessions(d.database)
    assert [r["outcome"] for r in rows][:3] == ["login-failed", "login-failed", "banned"]


def test_command_rules_and_privileged(daemon, ftp_upstream: FtpUpstream) -> None:
    d = daemon({"listeners": [ftp_listener(ftp_upstream)]}, RULES).start()
    ftp = client(d)
    ftp.login("PARTNER1", "partner-pw")
    assert ftp.nlst()  # NLST is on PARTNER1's list
    for command in ("DELE hello.txt", "SITE CHMOD 777 hello.txt", "RCMD DLTLIB QGPL", "MKD x"):
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.sendcmd(command)
    assert ftp.sendcmd("NOOP").startswith("200")  # housekeeping always allowed
    ftp.quit()
    assert d.stop() == 0
    con = sqlite3.connect(d.database)
    refused = con.execute(
        "SELECT user, command, argument FROM requests ORDER BY command"
    ).fetchall()
    con.close()
    assert refused == [
        ("PARTNER1", "DELE", "hello.txt"), ("PARTNER1", "MKD", "x"),
        ("PARTNER1", "RCMD", "DLTLIB QGPL"), ("PARTNER1", "SITE", "CHMOD 777 hello.txt"),
    ]  # fmt: skip

    # From a privileged address the same user is not restricted.
    d.write_rules({**RULES, "privileged": ["127.0.0.1"]})
    d.start()
    ftp = client(d)
    ftp.login("PARTNER1", "partner-pw")
    assert ftp.sendcmd("MKD allowed-here").startswith("257")
    ftp.quit()
    assert d.stop() == 0


def test_password_never_logged_or_stored(gate: Daemon) -> None:
    ftp = client(gate)
    ftp.login(USER, PASSWORD)
    ftp.quit()
    ftp = client(gate)
    with pytest.raises(ftplib.error_perm):
        ftp.login(USER, "another-Secret-99")
    ftp.close()
    assert gate.stop() == 0
    blobs = [gate.log_path.read_bytes()]
    blobs += [p.read_bytes() for p in gate.database.parent.iterdir()]  # db, -wal, -shm
    for secret in (PASSWORD, "another-Secret-99"):
        assert not any(secret.encode() in blob for blob in blobs)


def test_bounce_refused(gate: Daemon) -> None:
    ftp = client(gate)
    ftp.login(USER, PASSWORD)
    for arg in ("10,0,0,1,200,10", "127,0,0,1,0,21", "127,0,0,2,200,10"):
        with pytest.raises(ftplib.error_perm, match=r"^504"):
            ftp.sendcmd(f"PORT {arg}")
    with pytest.raises(ftplib.error_perm, match=r"^504"):
        ftp.sendcmd("EPRT |1|192.0.2.1|4000|")
    with pytest.raises(ftplib.error_perm, match=r"^501"):
        ftp.sendcmd("PORT garbage")
    ftp.quit()
    assert gate.stop() == 0


def test_foreign_data_connection_gets_nothing(gate: Daemon, root: Path) -> None:
    ftp = client(gate)
    ftp.login(USER, PASSWORD)
    ftp.voidcmd("TYPE I")
    host, port = ftplib.parse227(ftp.sendcmd("PASV"))
    assert host == "127.0.0.1"
    try:
        thief = socket.create_connection((host, port), source_address=("127.0.0.2", 0))
    except ConnectionResetError:
        pass  # refused so fast that the reset beat connect()'s return (a busy machine)
    else:
        with thief:  # refused: not the control connection's address
            assert read_until_closed(thief) == b""
    with socket.create_connection((host, port)) as data:
        ftp.sendcmd("RETR hello.txt")
        assert read_until_closed(data) == (root / "hello.txt").read_bytes()
    assert ftp.voidresp().startswith("226")
    ftp.quit()
    assert gate.stop() == 0


def test_passive_range_exhausted_gets_425(daemon, ftp_upstream: FtpUpstream) -> None:
    port = free_port()
    d = daemon({"listeners": [ftp_listener(ftp_upstream, passive_ports=f"{port}-{port}")]}, RULES)
    d.start()
    first, second = client(d), client(d)
    for ftp in (first, second):
        ftp.login(USER, PASSWORD)
    assert first.sendcmd("PASV").startswith("227")
    with pytest.raises(ftplib.error_temp, match=r"^425"):
        second.sendcmd("PASV")
    first.quit()  # the session's end gives the port back
    wait_for(lambda: len(sessions(d.database)) == 1, what="the first session to end")
    assert second.sendcmd("PASV").startswith("227")
    second.quit()
    assert d.stop() == 0


def test_auth_tls_refused(gate: Daemon) -> None:
    ftp = client(gate)
    with pytest.raises(ftplib.error_perm, match=r"^534"):
        ftp.sendcmd("AUTH TLS")
    ftp.login(USER, PASSWORD)  # the session goes on in plain
    ftp.quit()
    assert gate.stop() == 0


def test_new_pasv_replaces_the_previous_port(daemon, ftp_upstream: FtpUpstream) -> None:
    port = free_port()
    d = daemon({"listeners": [ftp_listener(ftp_upstream, passive_ports=f"{port}-{port}")]}, RULES)
    d.start()
    ftp = client(d)
    ftp.login(USER, PASSWORD)
    for _ in range(3):  # one port in the range: each PASV must free the one before
        assert ftplib.parse227(ftp.sendcmd("PASV"))[1] == port
    assert ftp.nlst()  # and a transfer after it works
    ftp.quit()
    assert d.stop() == 0


def test_foreign_data_connection_allowed_by_opt_in(
    daemon, ftp_upstream: FtpUpstream, root: Path
) -> None:
    d = daemon({"listeners": [ftp_listener(ftp_upstream, allow_foreign_data=True)]}, RULES).start()
    ftp = client(d)
    ftp.login(USER, PASSWORD)
    ftp.voidcmd("TYPE I")
    host, port = ftplib.parse227(ftp.sendcmd("PASV"))
    # A client behind a NAT pool: its data connection comes from another address.
    with socket.create_connection((host, port), source_address=("127.0.0.2", 0)) as data:
        ftp.sendcmd("RETR hello.txt")
        assert read_until_closed(data) == (root / "hello.txt").read_bytes()
    assert ftp.voidresp().startswith("226")
    ftp.quit()
    assert d.stop() == 0
