"""Network lists: the fast paths of the parser and of the rules made from a list, each
against the plain way (ipaddress's constructors, ``network_from_text``, ``replace``)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper import config
from gatekeeper.config import network_from_text, parse_network_list
from gatekeeper.errors import Problem
from gatekeeper.rules.engine import RuleSet
from gatekeeper.rules.hours import Hours
from gatekeeper.rules.model import Action, ListedRules, Network, Rule, RulesSpec, Source
from gatekeeper.rules.trie import CHUNK

V4, V6 = ipaddress.IPv4Network, ipaddress.IPv6Network


def reference(text: str, file: str) -> tuple[list[tuple[Network, int]], list[Problem]]:
    """Every line the slow way: comments off, then ``network_from_text``."""
    networks: list[tuple[Network, int]] = []
    problems: list[Problem] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        body = line.split("#", 1)[0].split(";", 1)[0].strip()
        if body:
            try:
                networks.append((network_from_text(body), lineno))
            except ValueError as exc:
                problems.append(Problem(file, lineno, str(exc)))
    return networks, problems


def same_networks(got: list[tuple[Network, int]], expected: list[tuple[Network, int]]) -> None:
    assert got == expected
    for (a, _), (b, _) in zip(got, expected, strict=True):
        assert type(a) is type(b) and str(a) == str(b) and hash(a) == hash(b)
        assert a.prefixlen == b.prefixlen and a.netmask == b.netmask


# -- rules made when asked for --------------------------------------------------------------
def listed(text: str, template: Rule, file: str = "drop.txt") -> ListedRules:
    v4, v6, problems = config._parse_network_lines(text, file)
    assert problems == []
    return ListedRules(template, file, v4, v6)


TEMPLATE = Rule(
    Action.DENY,
    Source("rules.yaml", 4),
    listeners=frozenset({"ftp"}),
    hours=Hours.parse("Mon-Fri 07:00-19:00"),
    comment="drop",
)


def test_listed_rules_are_the_template_with_network_and_source() -> None:
    text = "# head\n192.0.2.0/24\n2001:db8::/32 ; x\nfe80::%eth0/64\n 198.51.100.7\n"
    rules = listed(text, TEMPLATE)
    networks, _ = parse_network_list(text, "drop.txt")
    expected = [replace(TEMPLATE, source=Source("drop.txt", n), network=x) for x, n in networks]
    assert rules.rules() == expected
    assert [r.source.line for r in rules.rules()] == [2, 3, 4, 5]
    assert str(rules.rules()[2].network) == "fe80::%eth0/64"  # kept as read
    assert len(rules) == 4
    assert rules.rule(False, 1) is rules.rule(False, 1)  # made once
    assert rules.rules()[3] is rules.rule(False, 1)


def test_rules_spec_lists_every_rule_of_its_lists_in_order() -> None:
    first = Rule(Action.ALLOW, Source("rules.yaml", 1), network=V4("10.0.0.0/8"))
    last = Rule(Action.ALLOW, Source("rules.yaml", 9), countries=frozenset({"SE"}))
    drop = listed("192.0.2.0/24\n2001:db8::/32\n", TEMPLATE)
    spec = RulesSpec(rules=(first, drop, last))
    assert spec.entries == (first, drop, last)
    assert spec.rules == (first, *drop.rules(), last)
    assert RulesSpec().rules == () and RulesSpec() == RulesSpec()


@st.composite
def lists_and_rules(draw: st.DrawFn) -> tuple[Rule | ListedRules, ...]:
    """Rules and network lists whose networks nest, repeat and touch, of both families."""
    bases = ["10.66.6.6", "10.66.200.1", "2001:db8::6", "2001:db8:8000::1"]

    def network() -> Network:
        address = ipaddress.ip_address(draw(st.sampled_from(bases)))
        length = draw(st.integers(0, address.max_prefixlen))
        return ipaddress.ip_network(f"{address}/{length}", strict=False)

    entries: list[Rule | ListedRules] = []
    for line in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from([Action.ALLOW, Action.DENY]))
        listeners = draw(st.sampled_from([None, frozenset({"ftp"})]))
        template = Rule(action, Source("rules.yaml", line + 1), listeners=listeners)
        if draw(st.booleans()):
            text = "\n".join(str(network()) for _ in range(draw(st.integers(0, 6))))
            entries.append(listed(text, template, f"list{line}.txt"))
        else:
            entries.append(replace(template, network=network()))
    return tuple(entries)


@settings(max_examples=200, deadline=None)
@given(lists_and_rules(), st.sampled_from([Action.ALLOW, Action.DENY]))
def test_lists_decide_as_their_rules_would(
    entries: tuple[Rule | ListedRules, ...], default: Action
) -> None:
    compact = RuleSet.build(RulesSpec(default, rules=entries))
    spelled_out = RuleSet.build(RulesSpec(default, rules=RulesSpec(rules=entries).rules))
    assert compact.counts() == spelled_out.counts()
    probes = ["10.66.6.6", "10.66.200.1", "10.0.0.0", "11.0.0.0", "0.0.0.0", "255.255.255.255"]
    probes += [
        "2001:db8::6",
        "2001:db8:8000::1",
        "2001:db8::",
        "2001:db9::",
        "::",
        "::ffff:10.66.6.6",
    ]
    for address in probes:
        for listener in ("ftp", "telnet"):
            assert compact.decide(address, listener) == spelled_out.decide(address, listener)


# -- the parser's fast paths -----------------------------------------------------------------
def test_line_numbers_run_on_across_chunks() -> None:
    lines = [f"10.{i >> 8 & 255}.{i & 255}.0/24" for i in range(2 * CHUNK + 5)]
    lines[CHUNK] = "not a network"
    lines[-1] = "2001:db8::/32 # last"
    networks, problems = parse_network_list("\n".join(lines), "f")
    assert [p.line for p in problems] == [CHUNK + 1]
    assert networks[0] == (V4("10.0.0.0/24"), 1)
    assert networks[CHUNK] == (V4(lines[CHUNK + 1]), CHUNK + 2)
    assert networks[-1] == (V6("2001:db8::/32"), 2 * CHUNK + 5)


@pytest.mark.parametrize(
    "line",
    [
        "2001:db8::/32",
        "2001:DB8:0:0:0:0:0:0/32",
        "2001:0db8::/48 ; SBL1",
        "  2001:db8:1::/48\t# c",
        "::/0",
        "::",
        "::1",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "2001:db8::1/64",  # host bits set
        "2001:db8::/129",
        "2001:db8::/0128",
        "::ffff:0:0/96",  # IPv4-mapped: stored as IPv4
        "::ffff:c000:200/120",
        "::ffff:192.0.2.0/120",
        "1::2::3",
        ":1::",
        "1::2:",
        "12345::",
        "1:2:3:4:5:6:7:8:9",
        "1:2:3:4:5:6:7:8::",
        "fe80::1%eth0",
        "::g",
    ],
)
def test_ipv6_lines_as_ipaddress_reads_them(line: str) -> None:
    got, problems = parse_network_list(line, "f")
    expected, expected_problems = reference(line, "f")
    same_networks(got, expected)
    assert problems == expected_problems


_hextet = st.one_of(
    st.integers(0, 0xFFFF).map(lambda x: f"{x:x}"),
    st.integers(0, 0xFFFF).map(lambda x: f"{x:04X}"),
    st.sampled_from(["", "0", "00000", "ffff", "g"]),
)
_v6_text = st.one_of(
    st.lists(_hextet, min_size=1, max_size=10).map(":".join),
    st.builds(
        lambda a, b: ":".join(a) + "::" + ":".join(b),
        st.lists(_hextet, max_size=5),
        st.lists(_hextet, max_size=5),
    ),
    st.integers(0, 2**128 - 1).map(lambda x: str(ipaddress.IPv6Address(x))),
    st.integers(0, 2**128 - 1).map(lambda x: ipaddress.IPv6Address(x).exploded),
    st.integers(0, 2**32 - 1).map(lambda x: f"::ffff:{x >> 16:x}:{x & 0xFFFF:x}"),
)
_length = st.one_of(st.just(""), st.integers(0, 140).map(lambda n: f"/{n}"), st.just("/064"))
_tail = st.sampled_from(["", " ; SBL1", "  # c", "\t", "\r", " x"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.builds(lambda a, n, t: a + n + t, _v6_text, _length, _tail), max_size=8))
def test_ipv6_fast_path_agrees_with_the_slow_path(lines: list[str]) -> None:
    text = "\n".join(lines)
    got, problems = parse_network_list(text, "f")
    expected, expected_problems = reference(text, "f")
    same_networks(got, expected)
    assert problems == expected_problems


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=8))
def test_ipv4_fast_path_agrees_with_the_slow_path(pairs: list[tuple[int, int]]) -> None:
    text = "\n".join(f"{ipaddress.IPv4Address(v)}/{n}" for v, n in pairs)
    got, problems = parse_network_list(text, "f")
    expected, expected_problems = reference(text, "f")
    same_networks(got, expected)
    assert problems == expected_problems
