"""A flood of rejected connections while legitimate sessions run: nothing lost, nothing mixed."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import sqlite3
import threading
from pathlib import Path

from benchmarks import cprogs
from tests.integration.ftp_harness import PASSWORD, USER, FtpUpstream
from tests.integration.harness import BANNER, Upstream, connect, recv_exactly, rss_kib, wait_for
from tests.integration.test_ftp import ftp_listener

FLOOD = 50_000
RULES = {"default": "deny", "allow": ["127.0.0.0/8", "10.0.0.0/8"]}  # 100.64/10 floods


def _recorded(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute("SELECT COALESCE(SUM(attempts), 0) FROM rejections").fetchone()[0])
    finally:
        con.close()


def test_flood_beside_an_ftp_download_and_a_telnet_session(
    daemon, upstream: Upstream, root: Path
) -> None:
    ftp_up = FtpUpstream(root)
    try:
        tel = {"name": "tel", "protocol": "telnet", "listen": "127.0.0.1:0",
               "upstream": upstream.address, "proxy_protocol": ["127.0.0.1/32"]}  # fmt: skip
        d = daemon({"listeners": [ftp_listener(ftp_up), tel]}, RULES).start()
        assert d.proc is not None
        host, port = d.address("tel")
        flood = ("flood", host, str(port), "--proxy", "v1", "--close", "reset")
        cprogs.run_loadgen(*flood, "--count", "2000", "--concurrency", "100")  # warm-up
        wait_for(lambda: _recorded(d.database) == 2000, what="the warm-up recorded")
        rss_before = rss_kib(d.proc.pid)

        big = (root / "big.bin").read_bytes()
        done = threading.Event()
        failures: list[str] = []
        rounds = {"ftp": 0, "telnet": 0}

        def ftp_downloads() -> None:
            try:
                while not done.is_set() and rounds["ftp"] < 200:
                    ftp = ftplib.FTP(timeout=30)
                    ftp.connect("127.0.0.1", d.address("ftp")[1])
                    ftp.login(USER, PASSWORD)
                    got = io.BytesIO()
                    ftp.retrbinary("RETR big.bin", got.write)
                    ftp.quit()
                    if hashlib.sha256(got.getvalue()).digest() != hashlib.sha256(big).digest():
                        failures.append("FTP download differs")
                    rounds["ftp"] += 1
            except Exception as exc:  # the assertion below says what went wrong
                failures.append(f"FTP: {exc!r}")

        def telnet_session() -> None:
            try:
                with connect((host, port), claim="10.1.1.1", timeout=30) as c:
                    assert recv_exactly(c, len(BANNER)) == BANNER
                    while not done.is_set() and rounds["telnet"] < 2000:
                        chunk = os.urandom(4096)
                        c.sendall(chunk)
                        if recv_exactly(c, len(chunk)) != chunk:
                            failures.append("Telnet echo differs")
                        rounds["telnet"] += 1
            except Exception as exc:
                failures.append(f"Telnet: {exc!r}")

        workers = [threading.Thread(target=ftp_downloads), threading.Thread(target=telnet_session)]
        for w in workers:
            w.start()
        try:
            result = cprogs.run_loadgen(
                *flood, "--count", str(FLOOD), "--concurrency", "500", "--timeout", "240",
                timeout=300,
            )  # fmt: skip
        finally:
            done.set()
            for w in workers:
                w.join(60)
        assert not failures, failures
        assert rounds["ftp"] >= 1 and rounds["telnet"] >= 1, rounds
        assert result["connections"] == FLOOD and result["errors"] == 0, result
        assert d.proc.poll() is None  # still up

        wait_for(lambda: _recorded(d.database) == 2000 + FLOOD, what="the flood recorded")
        rss_after = rss_kib(d.proc.pid)
        assert rss_after < rss_before + 32 * 1024, (rss_before, rss_after)
        assert d.stop() == 0
        assert _recorded(d.database) == 2000 + FLOOD  # exact after stop: nothing lost
        con = sqlite3.connect(d.database)
        try:
            (addresses,) = con.execute("SELECT COUNT(DISTINCT address) FROM rejections").fetchone()
        finally:
            con.close()
        assert addresses == FLOOD  # one per claimed address, the warm-up's among them
        print(f"flood {FLOOD} at concurrency 500: {result['rate']:.0f}/s; FTP downloads "
              f"{rounds['ftp']}, Telnet echoes {rounds['telnet']}; RSS {rss_before} -> "
              f"{rss_after} KiB")  # fmt: skip
    finally:
        ftp_up.close()
