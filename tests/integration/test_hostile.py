"""Hostile input through real sockets: the daemon as a process, pyftpdlib as the IBM i.

- a megabyte line without a newline on the FTP control channel, before and after sign-on,
  from several clients at once, and a megabyte of junk into a PROXY listener before its
  header: the right refusal, bounded reads and memory, nothing of it upstream;
- NUL bytes and bytes that are not UTF-8 in ``USER``: the right reply, the name recorded
  exactly (upper-cased; undecodable bytes as ``\\xNN``), never a poisoned recorder;
- Telnet option storms: relayed byte for byte on Telnet listeners, other sessions going on;
  on the FTP control channel, IAC sequences stripped from verbs (no command smuggled past
  the rules), commands still working, nothing growing;
- ``PORT``/``EPRT`` to every kind of wrong address: ``504``, ``501`` or ``522``, and no data
  connection ever reaching the wrong address.

(Hostile names through every report format are ``test_security.py``'s.)
"""

from __future__ import annotations

import hashlib
import random
import socket
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.ftp.codec import MAX_LINE
from tests.fuzz.test_ftp_codec import strip_telnet
from tests.integration.ftp_harness import PASSWORD, USER, FtpUpstream
from tests.integration.harness import (
    BANNER,
    Upstream,
    connect,
    read_until_closed,
    recv_exactly,
    rss_kib,
    wait_for,
)
from tests.integration.test_ftp import ftp_listener
from tests.integration.test_gate import entries, report, sessions
from tests.integration.test_security import recorded, run

MB = 1 << 20
RULES: dict[str, Any] = {
    "default": "deny",
    "allow": ["127.0.0.0/8", "::1", "10.0.0.0/8"],
    "ftp": {
        "deny_users": ["ADMIN*", "ROOT"],
        "users": {"PARTNER1": {"commands": ["RETR", "LIST", "NLST", "CWD", "PWD"]}},
    },  # no ban: every attempt below gets its reply
}
R500_LONG = b"500 Command line too long.\r\n"


class Spy:
    """What reached the pyftpdlib upstream: bytes received, and every command line."""

    def __init__(self, upstream: FtpUpstream) -> None:
        self.bytes = 0
        self.lines: list[str] = []
        self._lock = threading.Lock()
        handler = upstream.server.handler
        collect, process = handler.collect_incoming_data, handler.pre_process_command
        upstream.server.handler.auth_failed_timeout = 0  # answer a failed sign-on at once
        spy = self

        def collect_incoming_data(self: Any, data: bytes) -> None:
            with spy._lock:
                spy.bytes += len(data)
            collect(self, data)

        def pre_process_command(self: Any, line: str, cmd: str, arg: str) -> None:
            with spy._lock:
                spy.lines.append(line)
            process(self, line, cmd, arg)

        handler.collect_incoming_data = collect_incoming_data
        handler.pre_process_command = pre_process_command


class Ftp:
    """A raw FTP control connection: bytes out exactly as given, whole replies in."""

    def __init__(
        self, address: tuple[str, int], claim: str | None = None, timeout: float = 20.0
    ) -> None:
        self.sock = connect(address, claim=claim, timeout=timeout)
        self.buf = b""
        self.welcome = self.reply()

    def _line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed; unanswered: {self.buf!r}")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def reply(self) -> bytes:
        """One whole reply (RFC 959 4.2: multi-line until ``NNN `` with the same code)."""
        first = self._line()
        lines = [first]
        if first[3:4] == b"-":
            while not (lines[-1][:3] == first[:3] and lines[-1][3:4] in (b" ", b"\r", b"\n")):
                lines.append(self._line())
        return b"".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def login(self, user: str = USER, password: str = PASSWORD) -> None:
        assert self.cmd(b"USER " + user.encode()).startswith(b"331")
        assert self.cmd(b"PASS " + password.encode()).startswith(b"230")

    def closed(self) -> bool:
        return self.buf == b"" and read_until_closed(self.sock) == b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Ftp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def ftp_up(root: Path) -> Iterator[FtpUpstream]:
    server = FtpUpstream(root)
    yield server
    server.close()


def rejections(db: Path) -> list[tuple[str, str, str | None, int]]:
    con = sqlite3.connect(db)
    try:
        query = "SELECT address, reason, user, attempts FROM rejections ORDER BY address"
        return list(con.execute(query))
    finally:
        con.close()


# -- a megabyte without a newline ----------------------------------------------------------

CLIENTS = 8


def test_megabyte_lines_on_the_control_channel(daemon, ftp_up: FtpUpstream) -> None:
    """Eight clients at once each send 1 MiB without a newline, half before and half after
    signing on: each gets one ``500 Command line too long.``, its session goes on once the
    line ends (one bad line of the ten allowed), the upstream sees none of it, and the
    daemon does not hold the megabytes."""
    spy = Spy(ftp_up)
    d = daemon({"listeners": [ftp_listener(ftp_up)]}, RULES).start()
    assert d.proc is not None
    addr = d.address("ftp")
    warm = Ftp(addr)  # the session machinery in memory before measuring
    warm.login()
    assert warm.cmd(b"QUIT").startswith(b"221")
    warm.close()
    rss_before = rss_kib(d.proc.pid)
    junk = b"A" * MB
    sent = threading.Barrier(CLIENTS + 1, timeout=60)
    finish = threading.Event()

    def client(i: int) -> list[bytes]:
        ftp = Ftp(addr)
        try:
            if i % 2:
                ftp.login()
            ftp.send(junk)  # no line end: the reader drops it as it comes
            got = [ftp.reply()]
            sent.wait()  # every client's megabyte is in; the daemon is measured now
            finish.wait(60)
            ftp.send(b"\r\n")  # the end of the dropped line: nothing to answer
            got.append(ftp.cmd(b"NOOP"))
            got.append(ftp.cmd(b"PWD"))
            got.append(ftp.cmd(b"QUIT"))
            assert ftp.closed()
            return got
        finally:
            ftp.close()

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client, i) for i in range(CLIENTS)]
        sent.wait()
        rss_peak = rss_kib(d.proc.pid)
        finish.set()
        replies = [f.result() for f in futures]
    for i, got in enumerate(replies):
        assert got[0] == R500_LONG
        assert got[1].startswith(b"200")
        # PWD before sign-on is the upstream's 530; after it, the home folder.
        assert got[2].startswith(b"257" if i % 2 else b"530")
        assert got[3].startswith(b"221")
    assert not any("AAAA" in line for line in spy.lines)
    assert spy.bytes < 16 * 1024  # the commands only, not megabytes
    rss_after = rss_kib(d.proc.pid)
    # 8 MiB went through; a few hundred KiB of buffers and allocator slack may remain.
    assert rss_peak - rss_before < CLIENTS * MB // 1024 // 4, (rss_before, rss_peak)
    assert d.stop() == 0
    rows = sessions(d.database)
    assert len(rows) == CLIENTS + 1
    assert sum(r["outcome"] == "logged-in" for r in rows) == CLIENTS // 2 + 1
    print(f"\n{CLIENTS} clients x 1 MiB without a newline: {CLIENTS} x 500, sessions went "
          f"on; upstream got {spy.bytes} bytes; RSS {rss_before} -> {rss_peak} (all sent) -> "
          f"{rss_after} KiB")  # fmt: skip


def test_megabytes_before_a_proxy_header(daemon, upstream: Upstream) -> None:
    """A trusted PROXY sender that sends 32 MiB of junk instead of a header is rejected
    (reason ``proxy``) after the first read: the daemon stops reading, so the sender's
    send fails long before 32 MiB are out, and nothing reaches the upstream."""
    listener = {"name": "telp", "protocol": "telnet", "listen": "127.0.0.1:0",
                "upstream": upstream.address, "proxy_protocol": ["127.0.0.1/32"]}  # fmt: skip
    d = daemon({"listeners": [listener]}, RULES).start()
    assert d.proc is not None
    addr = d.address("telp")
    with connect(addr, claim="10.1.2.3") as c:  # warm-up: one good session
        assert recv_exactly(c, len(BANNER)) == BANNER
    rss_before = rss_kib(d.proc.pid)
    junk = b"\x00JUNK" * (32 * MB // 5)
    view = memoryview(junk)

    def junk_sender(_: int) -> int:
        with socket.create_connection(addr, timeout=20) as s:
            sent = 0
            try:
                while sent < len(junk):
                    sent += s.send(view[sent : sent + MB])
            except (BrokenPipeError, ConnectionResetError):
                return sent
            raise AssertionError("the daemon read 32 MiB of junk before refusing")

    with ThreadPoolExecutor(CLIENTS) as pool:
        sent = list(pool.map(junk_sender, range(CLIENTS)))
    rss_after = rss_kib(d.proc.pid)
    assert upstream.connections == 1  # the warm-up's only
    wait_for(lambda: report(d, "--level", "detail")["attempts"] == CLIENTS, what="recorded")
    entry = entries(report(d, "--level", "detail"))[("telp", "127.0.0.1")]
    assert entry["reason"] == "proxy" and entry["attempts"] == CLIENTS
    assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after)
    assert d.stop() == 0
    print(f"\n{CLIENTS} PROXY senders x 32 MiB of junk: refused after "
          f"{min(sent) // 1024}-{max(sent) // 1024} KiB sent each (kernel buffers); "
          f"RSS {rss_before} -> {rss_after} KiB")  # fmt: skip


# -- user names with NULs and bytes that are not UTF-8 -----------------------------------

# (USER argument as sent, the reply expected, forwarded to the upstream?)
NAMES: list[tuple[bytes, bytes, bool]] = [
    (b"admin\x00", b"501", False),  # a NUL: syntax error, never forwarded (README)
    (b"alice\x00\x00bob", b"501", False),
    (b"\x00", b"501", False),
    (b"admin\xff\xff\xfe", b"530", False),  # IAC IAC is 0xFF: "admin\xff\xfe", not UTF-8
    (b"ADMIN\xc0\xaf", b"530", False),  # an overlong '/'
    (b"root", b"530", False),
    (b"bob\xc3(", b"331", True),  # a broken two-byte sequence
    (b"eve\xed\xa0\x80", b"331", True),  # an encoded surrogate
    (b"mallory\xf8\x88\x80\x80\x80", b"331", True),  # a five-byte form
    (b"j\xc3\xbcrgen", b"331", True),  # valid UTF-8: recorded as it is, upper-cased
    (b"tr\xff\xf4udy", b"331", True),  # IAC IP inside: a Telnet server drops it
]


def test_user_names_with_nul_and_invalid_utf8(daemon, ftp_up: FtpUpstream) -> None:
    """Each name from its own (PROXY-claimed) address, so that each rejection has its row."""
    spy = Spy(ftp_up)
    listener = ftp_listener(ftp_up, proxy_protocol=["127.0.0.1/32"])
    d = daemon({"listeners": [listener]}, RULES).start()
    addr = d.address("ftp")
    for i, (name, code, _) in enumerate(NAMES):
        ftp = Ftp(addr, claim=f"10.0.0.{i + 1}")
        try:
            answer = ftp.cmd(b"USER " + name)
            assert answer[:3] == code, (name, answer)
            if code == b"530":
                assert ftp.closed()  # denied users are shown the door
                continue
            if code == b"331":
                assert ftp.cmd(b"PASS wrong")[:3] == b"530"
            assert ftp.cmd(b"NOOP").startswith(b"200")  # the session goes on
            assert ftp.cmd(b"QUIT").startswith(b"221")
        finally:
            ftp.close()
    assert d.stop() == 0

    # The upstream got exactly the forwarded names, in the bytes the client sent.
    seen = [line.encode("utf-8", "replace") for line in spy.lines if line.startswith("USER ")]
    sent = [b"USER " + n.decode("utf-8", "replace").encode() for n, _, f in NAMES if f]
    assert seen == sent
    assert not any("\x00" in line for line in spy.lines)

    # The database: denied names as rejections (reason user), the others as failed
    # sign-ons, each upper-cased and whole, undecodable bytes as \xNN. NUL lines: nothing.
    def names(code: bytes) -> dict[str, str]:
        return {f"10.0.0.{i + 1}": recorded(strip_telnet(n)[0])
                for i, (n, c, _) in enumerate(NAMES) if c == code}  # fmt: skip

    expected = names(b"530")
    got = {address: (reason, user) for address, reason, user, _ in rejections(d.database)}
    assert got == {address: ("user", user) for address, user in expected.items()}
    rows = sessions(d.database)
    failed = {r["address"]: r["user"] for r in rows if r["outcome"] == "login-failed"}
    assert failed == names(b"331")
    assert "J\u00dcRGEN" in failed.values() and "TRUDY" in failed.values()
    assert {r["address"]: r["user"] for r in rows if r["outcome"] == "denied-user"} == expected
    silent = set(names(b"501"))
    assert {r["address"]: r["user"] for r in rows if r["address"] in silent} == dict.fromkeys(
        silent
    )
    # And the reports read them back (their formats are test_security.py's business).
    cfg = str(d.config_path)
    detail = run("report", "-c", cfg, "--level", "detail", "--format", "json").stdout
    assert "ADMIN\\\\xff\\\\xfe" in detail
    for fmt in ("text", "csv"):
        assert "ADMIN" in run("report", "-c", cfg, "--level", "detail", "--format", fmt).stdout
    print(f"\n{len(NAMES)} hostile USER names: {sum(c == b'501' for _, c, _ in NAMES)} x 501 "
          f"(NUL), {len(expected)} x 530 recorded as rejections, {len(failed)} forwarded and "
          f"recorded as failed sign-ons")  # fmt: skip


# -- Telnet option storms ------------------------------------------------------------------


def option_storm(size: int, seed: int = 7) -> bytes:
    """``size`` bytes of Telnet negotiation (RFC 854/855): WILL/WONT/DO/DONT, subnegotiations
    (terminal type, window size), IAC IAC, bare IACs, with text between."""
    rng = random.Random(seed)
    pieces = []
    for _ in range(4096):
        kind = rng.randrange(6)
        option = bytes([rng.randrange(256)])
        if kind < 4:
            pieces.append(b"\xff" + bytes([251 + kind]) + option)
        elif kind == 4:
            body = rng.randbytes(rng.randrange(40)).replace(b"\xff", b"\xff\xff")
            pieces.append(b"\xff\xfa" + option + body + b"\xff\xf0")
        else:
            pieces.append(rng.choice([b"\xff\xff", b"\xff", b"IBM-3179-2", b"\r\n", b"\r\x00"]))
    block = b"".join(pieces)
    out = bytearray()
    while len(out) < size:  # the block, with a counter so that no two stretches are equal
        out += block + len(out).to_bytes(8, "big")
    return bytes(out[:size])


STORM = 10 * MB


def test_telnet_option_storm_is_relayed_untouched(daemon, upstream: Upstream) -> None:
    """10 MiB of option negotiation through a Telnet listener (raw-socket pump) and through
    a PROXY Telnet listener (transport relay) into an echo: every byte comes back as sent,
    while another session's small echoes go on, and memory stays bounded."""
    tel = {"name": "tel", "protocol": "telnet", "listen": "127.0.0.1:0",
           "upstream": upstream.address}  # fmt: skip
    telp = {**tel, "name": "telp", "proxy_protocol": ["127.0.0.1/32"]}
    d = daemon({"listeners": [tel, telp]}, RULES).start()
    assert d.proc is not None
    payload = option_storm(STORM)
    rss_before = rss_kib(d.proc.pid)
    rounds = 0

    def send(sock: socket.socket) -> None:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)

    def small_echoes(sock: socket.socket, done: threading.Event) -> int:
        n = 0
        while not done.is_set() and n < 2000:
            chunk = f"ping {n}\r\n".encode() + b"\xff\xfb\x18"
            sock.sendall(chunk)
            assert recv_exactly(sock, len(chunk)) == chunk
            n += 1
        return n

    for name, claims in (("tel", (None, None)), ("telp", ("10.9.8.7", "10.9.8.8"))):
        addr = d.address(name)
        with (
            connect(addr, claim=claims[0], timeout=30) as storm,
            connect(addr, claim=claims[1], timeout=30) as other,
            ThreadPoolExecutor(2) as pool,
        ):
            assert recv_exactly(storm, len(BANNER)) == BANNER
            assert recv_exactly(other, len(BANNER)) == BANNER
            done = threading.Event()
            sending = pool.submit(send, storm)
            pings = pool.submit(small_echoes, other, done)
            echoed = read_until_closed(storm, limit=STORM + 1)
            done.set()
            sending.result()
            rounds += pings.result()
        assert len(echoed) == len(payload)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    rss_after = rss_kib(d.proc.pid)
    assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after)
    assert d.stop() == 0
    print(
        f"\nTelnet storm: 2 x {STORM // MB} MiB of IAC sequences echoed byte for byte; "
        f"{rounds} echoes of the other sessions meanwhile; RSS {rss_before} -> {rss_after} KiB"
    )


def test_telnet_sequences_on_the_ftp_control_channel(daemon, ftp_up: FtpUpstream) -> None:
    """IAC sequences on the FTP control channel: the inspector judges the verb without them
    (``DE IAC NOP LE`` is DELE, refused for a restricted user; IAC IAC is a 0xFF byte, not a
    letter), the upstream gets the line as sent (a Telnet server drops them the same way),
    storms of them cost nothing: 600 commands of 2 KiB of IAC each, memory flat."""
    spy = Spy(ftp_up)
    d = daemon({"listeners": [ftp_listener(ftp_up)]}, RULES).start()
    assert d.proc is not None
    with Ftp(d.address("ftp")) as ftp:
        ftp.login("PARTNER1", "partner-pw")
        iac_ip_dm = b"\xff\xf4\xff\xf2"
        assert ftp.cmd(iac_ip_dm + b"ABOR")[:3] in (b"225", b"226")  # RFC 959 4.1.3, end to end
        for smuggled in (b"DE\xff\xf1LE hello.txt", iac_ip_dm + b"DELE hello.txt",
                         b"\xff\xfb\x01DELE hello.txt", b"RC\xff\xf1MD DLTLIB QGPL"):  # fmt: skip
            assert ftp.cmd(smuggled).startswith(b"550")  # the rules saw DELE / RCMD
        assert ftp.cmd(b"D\xff\xffELE hello.txt").startswith(b"500")  # 0xFF is no letter
        assert ftp.cmd(b"\xff\xff" * 1500)[:3] == b"500"  # a storm of IAC IAC: no verb at all
        assert ftp.cmd(b"\xff\xff" * (MAX_LINE // 2 + 1)) == R500_LONG
        # 3 bad lines of the 10 allowed: the session goes on. Storms of IAC NOP before STAT
        # (pyftpdlib, like many servers, reads the last four letters of a line it cannot parse).
        rss_before = rss_kib(d.proc.pid)
        storm_line = b"\xff\xf1" * 1000 + b"STAT"
        for _ in range(20):
            ftp.send((storm_line + b"\r\n") * 30)  # 30 in flight, under the 64 outstanding
            for _ in range(30):
                assert ftp.reply().startswith(b"211")
        rss_after = rss_kib(d.proc.pid)
        assert ftp.cmd(b"PWD").startswith(b"257")
        assert ftp.cmd(b"QUIT").startswith(b"221")
    assert d.stop() == 0
    con = sqlite3.connect(d.database)
    try:
        refused = con.execute("SELECT command, SUM(attempts) FROM requests GROUP BY command")
        assert dict(refused.fetchall()) == {"DELE": 3, "RCMD": 1}
    finally:
        con.close()
    assert not any("DELE" in line or "RCMD" in line for line in spy.lines)
    assert rss_after - rss_before < 4 * 1024, (rss_before, rss_after)
    print(f"\nIAC on the control channel: 4 smuggling attempts refused (550), 3 bad lines "
          f"(500), 600 storm commands of {len(storm_line)} bytes answered; RSS "
          f"{rss_before} -> {rss_after} KiB")  # fmt: skip


# -- PORT and EPRT to every kind of wrong address --------------------------------------------

TRAP = 50000  # 195 * 256 + 80: "195,80" in PORT
# (command, reply code) for a client on 127.0.0.1; RFC 959 4.1.2 / RFC 2428 2 syntax, RFC
# 2577 bounce rules: another host or a port below 1024 is 504, broken syntax 501, and an
# EPRT network protocol other than 1 and 2 is 522 (RFC 2428).
WRONG_V4: list[tuple[bytes, bytes]] = [
    (b"PORT 127,0,0,2,195,80", b"504"),  # another host (a trap listens there)
    (b"PORT 10,0,0,1,195,80", b"504"),
    (b"PORT 0,0,0,0,195,80", b"504"),
    (b"PORT 255,255,255,255,195,80", b"504"),  # broadcast
    (b"PORT 224,0,0,1,195,80", b"504"),  # multicast
    (b"PORT 127,0,0,1,0,21", b"504"),  # below 1024
    (b"PORT 127,0,0,1,3,255", b"504"),  # 1023
    (b"PORT 127,0,0,1,0,0", b"504"),  # port 0
    (b"PORT 127,0,0,1,256,1", b"501"),  # numbers over 255
    (b"PORT 127,0,0,1,1,256", b"501"),
    (b"PORT 127,0,0,300,195,80", b"501"),
    (b"PORT 127,0,0,1,1000,1", b"501"),
    (b"PORT 127,0,0,1,99999999999999999999,1", b"501"),
    (b"PORT 127,0,0,1,195", b"501"),  # too few
    (b"PORT 127,0,0,1,195,80,1", b"501"),  # too many
    (b"PORT 127,0,0,-1,195,80", b"501"),  # negative
    (b"PORT 127.0.0.1.195.80", b"501"),  # bad delimiters
    (b"PORT 127;0;0;1;195;80", b"501"),
    (b"PORT 0x7f,0,0,1,195,80", b"501"),
    (b"PORT ", b"501"),  # empty argument
    (b"PORT", b"501"),
    (b"EPRT |1|127.0.0.2|50000|", b"504"),
    (b"EPRT |1|0.0.0.0|50000|", b"504"),
    (b"EPRT |1|127.0.0.1|80|", b"504"),
    (b"EPRT |1|127.0.0.1|0|", b"504"),
    (b"EPRT |2|::1|50000|", b"504"),  # IPv6 from an IPv4 client
    (b"EPRT |2|::ffff:127.0.0.2|50000|", b"504"),
    (b"EPRT |2|ff02::1|50000|", b"504"),  # multicast
    (b"EPRT |1|127.0.0.1|65536|", b"501"),  # huge ports
    (b"EPRT |1|127.0.0.1|999999999999|", b"501"),
    (b"EPRT |1|127.0.0.1|-1|", b"501"),
    (b"EPRT |3|127.0.0.1|50000|", b"522"),  # unknown family: RFC 2428 says which it knows
    (b"EPRT |2|127.0.0.1|50000|", b"501"),  # family and address disagree
    (b"EPRT |1|::1|50000|", b"501"),
    (b"EPRT |1|127.1|50000|", b"501"),
    (b"EPRT |1|0127.0.0.1|50000|", b"501"),
    (b"EPRT |2|fe80::1%lo|50000|", b"501"),
    (b"EPRT |1|127.0.0.1|50000", b"501"),  # bad delimiters
    (b"EPRT |1!127.0.0.1!50000!", b"501"),
    (b"EPRT  1 127.0.0.1 50000 ", b"501"),
    (b"EPRT |1|127.0.0.1:50000|", b"501"),
    (b"EPRT \x01127.0.0.1\x01", b"501"),
    (b"EPRT ", b"501"),
    (b"EPRT", b"501"),
]
# The same from a client on ::1.
WRONG_V6: list[tuple[bytes, bytes]] = [
    (b"EPRT |1|127.0.0.1|50000|", b"504"),  # IPv4 from an IPv6 client
    (b"EPRT |2|::2|50000|", b"504"),
    (b"EPRT |2|::1|1023|", b"504"),
    (b"EPRT |2|::|50000|", b"504"),
    (b"PORT 127,0,0,1,195,80", b"504"),
    (b"EPRT |2|::1|65536|", b"501"),
    (b"EPRT |2|::1::1|50000|", b"501"),
]


def traps() -> Iterator[socket.socket]:
    """Listeners where a bounced data connection would arrive: 127.0.0.2 and [::1] on
    TRAP and, when this process may bind them, 127.0.0.1:80 and 127.0.0.1:1023."""
    for family, host, port in ((socket.AF_INET, "127.0.0.2", TRAP),
                               (socket.AF_INET6, "::1", TRAP), (socket.AF_INET, "127.0.0.1", 80),
                               (socket.AF_INET, "127.0.0.1", 1023)):  # fmt: skip
        sock = socket.socket(family)
        try:
            sock.bind((host, port))
        except OSError:  # taken, or not allowed below 1024: the reply is checked anyway
            sock.close()
            continue
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def nothing_connected(sockets: list[socket.socket]) -> bool:
    for sock in sockets:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            continue
        conn.close()
        return False
    return True


def test_port_and_eprt_to_wrong_addresses(daemon, ftp_up: FtpUpstream, root: Path) -> None:
    spy = Spy(ftp_up)
    v6 = {**ftp_listener(ftp_up), "name": "ftp6", "listen": "[::1]:0"}
    v6.pop("passive_ports")  # the kernel's: no overlap with the first listener's range
    d = daemon({"listeners": [ftp_listener(ftp_up), v6]}, RULES).start()
    trapped = list(traps())
    try:
        assert len(trapped) >= 2
        checked = 0
        for name, table in (("ftp", WRONG_V4), ("ftp6", WRONG_V6)):
            with Ftp(d.address(name)) as ftp:
                ftp.login()
                assert ftp.cmd(b"TYPE I").startswith(b"200")
                for command, code in table:
                    got = ftp.cmd(command)
                    assert got[:3] == code, (name, command, got)
                    assert nothing_connected(trapped), command
                    checked += 1
                # A PORT to the client's own address works, and its data arrives there only.
                v6_client = name == "ftp6"
                family = socket.AF_INET6 if v6_client else socket.AF_INET
                with socket.create_server(
                    ("::1" if v6_client else "127.0.0.1", 0), family=family
                ) as own:
                    port = own.getsockname()[1]
                    good = (f"EPRT |2|::1|{port}|" if v6_client
                            else f"PORT 127,0,0,1,{port >> 8},{port & 0xFF}").encode()  # fmt: skip
                    assert ftp.cmd(good).startswith(b"200")
                    assert ftp.cmd(b"RETR hello.txt")[:3] in (b"125", b"150")
                    conn, _ = own.accept()
                    with conn:
                        assert read_until_closed(conn) == (root / "hello.txt").read_bytes()
                    assert ftp.reply().startswith(b"226")
                assert nothing_connected(trapped)
                assert ftp.cmd(b"QUIT").startswith(b"221")
    finally:
        for sock in trapped:
            sock.close()
    assert d.stop() == 0
    # The upstream never saw a client's PORT or EPRT: only gatekeeper's own, for the good one.
    forwarded = [line for line in spy.lines if line[:4] in ("PORT", "EPRT")]
    assert len(forwarded) == 2 and all(str(TRAP) not in line for line in forwarded)
    print(
        f"\nPORT/EPRT to wrong addresses: {checked} commands answered 504/501/522, "
        f"{len(trapped)} trap listeners got nothing; the good PORT and EPRT delivered"
    )
