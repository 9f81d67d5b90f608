"""The journal and syslog through a real daemon: first rejections, flood summaries, SIEM."""

from __future__ import annotations

import re
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.integration.harness import connect, free_port, read_until_closed, wait_for
from tests.test_eventlog import RFC5424, params

RULES: dict[str, Any] = {"default": "deny", "allow": ["10.0.0.0/8"]}
FIRST = re.compile(r"INFO (\S+): first rejection on gate \(reason default")
SUMMARY = re.compile(r"rejections in the last [^:]+: (\d+) from (\d+) address")


def listener() -> dict[str, Any]:
    return {"name": "gate", "protocol": "tcp", "listen": "127.0.0.1:0",
            "upstream": "127.0.0.1:9", "proxy_protocol": ["127.0.0.1/32"]}  # fmt: skip


class Receiver:
    """A syslog receiver on 127.0.0.1: UDP datagrams, or TCP with octet counting."""

    def __init__(self, transport: str) -> None:
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.target = f"{transport}://127.0.0.1:{self.sock.getsockname()[1]}"
        self.messages: list[bytes] = []
        self.lock = threading.Lock()
        self.bad: list[bytes] = []
        run = self._udp if transport == "udp" else self._tcp
        if transport == "tcp":
            self.sock.listen()
        threading.Thread(target=run, daemon=True).start()

    def _add(self, message: bytes) -> None:
        with self.lock:
            self.messages.append(message)

    def _udp(self) -> None:
        while True:
            try:
                self._add(self.sock.recv(65536))
            except OSError:
                return

    def _tcp(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._frames, args=(conn,), daemon=True).start()

    def _frames(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while data := conn.recv(65536):
                buf += data
                while b" " in buf:
                    length, _, rest = buf.partition(b" ")
                    if not length.isdigit():
                        self.bad.append(buf)
                        return
                    if len(rest) < int(length):
                        break
                    self._add(rest[: int(length)])
                    buf = rest[int(length) :]

    def attempts(self) -> Counter[str]:
        """REJECT attempts per address, checking every message against the RFC 5424 ABNF."""
        got: Counter[str] = Counter()
        with self.lock:
            messages = list(self.messages)
        for message in messages:
            m = RFC5424.fullmatch(message.decode())
            assert m is not None, message
            if m["msgid"] == "REJECT":
                p = params(message)
                assert p["listener"] == "gate" and p["reason"] == "default"
                got[p["address"]] += int(p["attempts"])
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["udp", "tcp"])
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    r = Receiver(request.param)
    yield r
    r.close()


def knock(address: tuple[str, int], claims: list[str]) -> None:
    """One rejected connection per claim, from PROXY-claimed addresses, in parallel."""

    def one(claim: str) -> None:
        with connect(address, claim=claim) as c:
            read_until_closed(c)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, claims))


def firsts(output: str) -> Counter[str]:
    return Counter(FIRST.findall(output))


def test_rejections_reach_syslog_with_exact_counts(daemon, receiver: Receiver) -> None:
    d = daemon({"listeners": [listener()], "syslog": {"target": receiver.target}}, RULES).start()
    addr = d.address("gate")
    wanted = Counter({"192.0.2.1": 5, "192.0.2.2": 3, "2001:db8::7": 1})
    knock(addr, list(wanted.elements()))
    wait_for(lambda: receiver.attempts() == wanted, what=f"REJECT counts {wanted}")
    wait_for(lambda: firsts(d.output()) == Counter(wanted.keys()), what="first-rejection lines")
    knock(addr, ["192.0.2.1"] * 2 + ["10.1.2.3"])  # seen before, or allowed: no new line
    wanted["192.0.2.1"] += 2
    wait_for(lambda: receiver.attempts() == wanted, what="the later REJECT counts")
    assert d.stop() == 0
    assert firsts(d.output()) == Counter(wanted.keys())
    assert not receiver.bad
    assert "syslog: forwarding rejections and bans to " + receiver.target in d.output()


def test_flood_is_summarised(daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEKEEPER_SUMMARY_INTERVAL", "0.5")  # documented as for tests
    rx = Receiver("tcp")
    try:
        d = daemon({"listeners": [listener()], "syslog": {"target": rx.target}}, RULES).start()
        claims = [f"198.51.100.{i}" for i in range(60)] * 5
        knock(d.address("gate"), claims)
        wait_for(lambda: sum(rx.attempts().values()) == 300, what="300 REJECT attempts")
        assert rx.attempts() == Counter(claims)

        def summarised() -> list[tuple[int, int]]:
            found = [(int(n), int(m)) for n, m in SUMMARY.findall(d.output())]
            return found if sum(n for n, _ in found) == 300 else []

        lines = wait_for(summarised, what="summary lines adding up to 300")
        assert all(m <= 60 for _, m in lines)
        output = d.output()
        assert 1 <= sum(firsts(output).values()) <= 20
        assert max(firsts(output).values()) == 1
        assert "more new addresses not listed" in output
        assert len(output.splitlines()) < 60  # never a line per connection
        assert d.stop() == 0
    finally:
        rx.close()


def test_dead_syslog_target_does_not_stop_the_gate(daemon) -> None:
    target = f"tcp://127.0.0.1:{free_port()}"
    d = daemon({"listeners": [listener()], "syslog": {"target": target}}, RULES).start()
    addr = d.address("gate")
    knock(addr, [f"203.0.113.{i % 7}" for i in range(70)])
    wait_for(lambda: "syslog: cannot send to " + target in d.output(), what="the syslog error")
    wait_for(lambda: len(firsts(d.output())) == 7, what="first-rejection lines")
    knock(addr, ["203.0.113.99"] * 3)  # still gating (and recording) while the SIEM is down
    wait_for(lambda: "203.0.113.99" in firsts(d.output()), what="a later first rejection")
    assert d.stop() == 0
    assert d.output().count("syslog: cannot send") == 1  # logged once, not per message
    assert re.search(r"syslog: \d+ messages could not be sent to " + re.escape(target), d.output())
