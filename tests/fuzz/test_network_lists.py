"""Fuzzing the network-list parser (FireHOL / Spamhaus DROP files) with hostile lines.

Contract: ``parse_network_list`` never raises; it returns exactly the networks and the
problems that reading each line the plain way (comments off, then ``network_from_text``,
i.e. ipaddress) gives, every problem at its line with a message of bounded length; lines
are numbered by LF only. Its fast paths must agree with that on every odd form: /33 and
/129, huge prefixes, leading zeros, IPv4-mapped and embedded-IPv4 IPv6, zone ids,
netmasks, ranges, Unicode digits, NULs, CRs, megabyte lines.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.config import parse_network_list
from tests.fuzz import fuzz_settings
from tests.fuzz.mutate import Edit, apply, edits
from tests.rules.test_network_lists import reference, same_networks

LINES = [
    "192.0.2.0/24 ; SBL1", "203.0.113.7", "10.0.0.0/8# comment", "\t198.51.100.0/24\r",
    "0.0.0.0/0", "255.255.255.255/32", "1.2.3.0/33", "1.2.3.4/-1", "1.2.3.4/08", "1.2.3.4/",
    "010.1.2.3", "1.2.3", "1.2.3.4.5", "0x7f000001", "1.2.3.4/255.255.255.0", "1.2.3.0/0.0.0.255",
    "1.2.3.4-1.2.3.9", "1.2.3.4 /24", "2001:db8::/32 # v6", "::/0", "::", "::1/128",
    "2001:DB8::/129", "::ffff:1.2.3.0/120", "::ffff:1.2.3.4", "::1.2.3.4", "64:ff9b::1.2.3.4/128",
    "fe80::1%eth0", "fe80::%1/64", "1::2::3", ":::", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7:8",
    "[::1]", "2001:0db8:0000:0000:0000:0000:0000:0000/32", "2001:db8:0:0:0:0:0:0:0/48",
    "\u0661.2.3.4", "1.2.3.4/\u0663\u0662", "\uff11.2.3.4", "1.2.3.4\x00", "; only a comment",
    "# 1.2.3.4", "", "   ", "1.2.3.4/99999999999999999999999", "2001:db8::/" + "9" * 30,
]  # fmt: skip
TOKENS = [t.encode() for t in ["/", "/33", "/129", "/-1", ".", ":", "::", "%", "#", ";", "\r",
          "\t", "\0", "0", "00", "255", "256", "ffff", "\u0663", "-", " "]]  # fmt: skip


@fuzz_settings()
@given(
    st.lists(st.sampled_from(LINES), max_size=30),
    st.sampled_from(["\n", "\r\n", "\r"]),
    edits([*TOKENS, b"\n"], repeats=[2, 40, 5000, 1 << 16], max_size=4),
)
def test_network_list(lines: list[str], ending: str, changes: list[Edit]) -> None:
    raw = apply(ending.join(lines).encode(), changes)
    text = raw.decode("utf-8", "replace")  # the loader reads UTF-8: what it can decode
    networks, problems = parse_network_list(text, "drop.txt")
    expected_networks, expected_problems = reference(text, "drop.txt")
    same_networks(networks, expected_networks)
    assert problems == expected_problems
    count = text.count("\n") + 1
    assert all(1 <= line <= count for _, line in networks)
    assert [line for _, line in networks] == sorted(line for _, line in networks)
    for p in problems:
        assert p.line is not None and 1 <= p.line <= count
        assert len(p.message) <= 600, (len(p.message), p.message[:200])
