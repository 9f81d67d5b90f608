"""RuleSet.decide: every precedence case, then against a brute-force reference."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from datetime import datetime, tzinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.errors import ConfigError
from gatekeeper.rules import engine
from gatekeeper.rules.engine import Decision, RuleSet
from gatekeeper.rules.hours import Hours
from gatekeeper.rules.model import Action, Address, Network, Reason, Rule, RulesSpec, Source
from gatekeeper.settings import normalise_address, parse_network

ALLOW, DENY = Action.ALLOW, Action.DENY
FILE = "rules.d/main.yaml"
DEFAULT_SOURCE = Source(FILE, 1)
OFFICE = "Mon-Fri 07:00-19:00"
MONDAY_NOON = datetime(2026, 11, 23, 12, 0)
SATURDAY_NOON = datetime(2026, 11, 28, 12, 0)

_lines = iter(range(2, 1_000_000))


def rule(
    action: Action,
    network: str | Network | None = None,
    *,
    countries: Iterable[str] = (),
    listeners: Iterable[str] | None = None,
    hours: str | None = None,
) -> Rule:
    """A rule on its own line of FILE."""
    return Rule(
        action,
        Source(FILE, next(_lines)),
        network=parse_network(network) if isinstance(network, str) else network,
        countries=frozenset(countries),
        listeners=None if listeners is None else frozenset(listeners),
        hours=None if hours is None else Hours.parse(hours),
    )


def ruleset(
    *rules: Rule,
    default: Action = DENY,
    default_source: Source | None = DEFAULT_SOURCE,
    privileged: Iterable[str] = (),
    country_of: Callable[[Address], str | None] | None = None,
) -> RuleSet:
    spec = RulesSpec(
        default=default,
        default_source=default_source,
        rules=rules,
        privileged=tuple(parse_network(x) for x in privileged),
    )
    return RuleSet.build(spec, country_of)


def decided(action: Action, reason: Reason, by: Rule, match: str) -> Decision:
    return Decision(action, reason, by, by.source, match)


def by_network(by: Rule) -> Decision:
    return decided(by.action, Reason.NETWORK, by, str(by.network))


def by_default(action: Action = DENY, source: Source | None = DEFAULT_SOURCE) -> Decision:
    return Decision(action, Reason.DEFAULT, None, source, None)


def schedule(allow: Rule, match: str | None = None) -> Decision:
    return decided(DENY, Reason.SCHEDULE, allow, match or str(allow.network))


# -- networks ------------------------------------------------------------------------------
def test_longest_prefix_beats_shorter() -> None:
    ten, lab, host = rule(ALLOW, "10.0.0.0/8"), rule(DENY, "10.66.0.0/16"), rule(ALLOW, "10.66.6.6")
    rules = ruleset(ten, lab, host)
    assert rules.decide("10.1.2.3", "ftp") == by_network(ten)
    assert rules.decide("10.66.1.2", "ftp") == by_network(lab)
    assert rules.decide("10.66.6.6", "ftp") == by_network(host)
    assert rules.decide("10.66.6.6", "ftp").match == "10.66.6.6/32"
    assert rules.decide("11.0.0.0", "ftp") == by_default()


@pytest.mark.parametrize("deny_first", [True, False])
def test_deny_wins_at_equal_prefix(deny_first: bool) -> None:
    allow, deny = rule(ALLOW, "192.0.2.0/24"), rule(DENY, "192.0.2.0/24")
    rules = ruleset(*((deny, allow) if deny_first else (allow, deny)), default=ALLOW)
    assert rules.decide("192.0.2.9", "ftp") == by_network(deny)


def test_first_rule_in_file_order_decides_among_equals() -> None:
    allow1, allow2 = rule(ALLOW, "192.0.2.0/24"), rule(ALLOW, "192.0.2.0/24")
    deny1, deny2 = rule(DENY, "198.51.100.0/24"), rule(DENY, "198.51.100.0/24")
    rules = ruleset(allow1, allow2, rule(ALLOW, "198.51.100.0/24"), deny1, deny2)
    assert rules.decide("192.0.2.1", "ftp").rule is allow1
    assert rules.decide("198.51.100.1", "ftp").rule is deny1


def test_default_decides_when_nothing_matches() -> None:
    assert ruleset().decide("192.0.2.1", "ftp") == by_default()
    allowed = ruleset(default=ALLOW).decide("192.0.2.1", "ftp")
    assert allowed == by_default(ALLOW)
    assert allowed.allowed
    assert not ruleset().decide("192.0.2.1", "ftp").allowed
    # No file set ``default:``: deny, from nowhere.
    assert ruleset(default_source=None).decide("192.0.2.1", "ftp") == by_default(DENY, None)


def test_listeners_limit_a_rule() -> None:
    ten = rule(ALLOW, "10.0.0.0/8")
    ftp_only = rule(DENY, "10.66.0.0/16", listeners=["ftp"])
    telnet_only = rule(ALLOW, "10.66.0.0/16", listeners=["telnet", "tn5250"])
    rules = ruleset(ten, ftp_only, telnet_only)
    assert rules.decide("10.66.1.1", "ftp") == by_network(ftp_only)
    assert rules.decide("10.66.1.1", "telnet") == by_network(telnet_only)
    assert rules.decide("10.66.1.1", "tcp") == by_network(ten)  # neither applies: next level


def test_ipv6_rules_and_addresses() -> None:
    doc, lab = rule(DENY, "2001:db8::/32"), rule(ALLOW, "2001:db8:1::/48")
    any4 = rule(DENY, "0.0.0.0/0")
    rules = ruleset(doc, lab, any4, default=ALLOW)
    assert rules.decide("2001:db8::1", "ftp") == by_network(doc)
    assert rules.decide("2001:db8:1::1", "ftp") == by_network(lab)
    assert rules.decide(ipaddress.IPv6Address("2001:db8:1::1"), "ftp") == by_network(lab)
    assert rules.decide("2001:db9::1", "ftp") == by_default(ALLOW)  # IPv4 /0 is not IPv6
    assert rules.decide("::1", "ftp") == by_default(ALLOW)
    assert rules.decide("192.0.2.1", "ftp") == by_network(any4)


def test_zone_id_is_dropped() -> None:
    link = rule(ALLOW, "fe80::/10")
    assert ruleset(link).decide("fe80::1%eth0", "ftp") == by_network(link)


@pytest.mark.parametrize(
    "address",
    [
        "::ffff:10.66.1.1",
        "::FFFF:0a42:0101",
        ipaddress.IPv6Address("::ffff:10.66.1.1"),
        ipaddress.IPv4Address("10.66.1.1"),
        "10.66.1.1",
    ],
)
def test_ipv4_mapped_clients_match_ipv4_rules(address: str | Address) -> None:
    lab = rule(DENY, "10.66.0.0/16")
    rules = ruleset(lab, rule(ALLOW, "::/0"), default=ALLOW)
    assert rules.decide(address, "ftp") == by_network(lab)


def test_ipv4_mapped_rule_matches_ipv4_clients() -> None:
    # parse_network turns it into 10.0.0.0/8; a Rule made another way must still match.
    mapped = rule(DENY, ipaddress.IPv6Network("::ffff:10.0.0.0/104"))
    rules = ruleset(mapped, default=ALLOW)
    assert rules.decide("10.1.2.3", "ftp") == decided(
        DENY, Reason.NETWORK, mapped, "::ffff:a00:0/104"
    )
    assert rules.decide("::ffff:10.1.2.3", "ftp").rule is mapped
    assert rules.decide("11.1.2.3", "ftp") == by_default(ALLOW)


@pytest.mark.parametrize("bad", ["", "1.2.3", "10.0.0.256", "not an address", "::g", "1.2.3.4/32"])
def test_bad_address_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        ruleset().decide(bad, "ftp")


def test_repeated_decisions_are_equal() -> None:
    rules = ruleset(
        rule(DENY, "10.0.0.0/8"), rule(DENY, countries=["CN"]), country_of=lambda a: "CN"
    )
    assert rules.decide("10.0.0.1", "ftp") == rules.decide("10.9.9.9", "ftp")
    assert rules.decide("11.0.0.1", "ftp") == rules.decide("11.9.9.9", "ftp")


def test_only_decisions_the_same_everywhere_are_remembered() -> None:
    """A decision is remembered for the addresses around it only where neither listener nor
    time can change it; the others are worked out again, and all come out the same."""
    deny = rule(DENY, "10.0.0.0/8")
    ftp_only = rule(ALLOW, "10.66.0.0/16", listeners=["ftp"])
    office = rule(ALLOW, "192.0.2.0/24", hours=OFFICE)
    rules = ruleset(deny, ftp_only, office, rule(DENY, "2001:db8::/32"), default=ALLOW)
    (_, v4), (_, v6) = rules._settled
    for _ in range(2):
        assert rules.decide("10.1.2.3", "telnet") == by_network(deny)
        assert rules.decide("10.200.0.1", "ftp") == by_network(deny)
        assert rules.decide("10.66.0.1", "ftp") == by_network(ftp_only)
        assert rules.decide("10.66.0.1", "telnet") == by_network(deny)
        assert rules.decide("192.0.2.1", "ftp", MONDAY_NOON) == by_network(office)
        assert rules.decide("192.0.2.1", "ftp", SATURDAY_NOON) == by_default(ALLOW)
        assert rules.decide("11.0.0.1", "ftp") == by_default(ALLOW)
        assert rules.decide("2001:db8::1", "ftp").rule is not None
    assert sum(x is not None for x in v4) == 3  # 10/8 either side of 10.66/16, and no match
    assert sum(x is not None for x in v6) == 1
    assert all(x is None or x.rule not in (ftp_only, office) for x in v4)
    # With country rules, an address no network rule matches is looked up every time.
    countries = ruleset(rule(DENY, countries=["CN"]), country_of=lambda a: None)
    assert countries.decide("11.0.0.1", "ftp") == by_default()
    assert countries._settled[0][1] == [None]


# -- hours ---------------------------------------------------------------------------------
def test_allow_in_hours_and_schedule_denial_out_of_them() -> None:
    vendor = rule(ALLOW, "198.51.100.0/24", hours=OFFICE)
    rules = ruleset(vendor)
    assert rules.decide("198.51.100.7", "ftp", MONDAY_NOON) == by_network(vendor)
    assert rules.decide("198.51.100.7", "ftp", SATURDAY_NOON) == schedule(vendor)
    assert ruleset(vendor, default=ALLOW).decide("198.51.100.7", "ftp", SATURDAY_NOON) == (
        by_default(ALLOW)
    )


def test_out_of_hours_allow_before_a_broader_deny_is_a_schedule_denial() -> None:
    vendor = rule(ALLOW, "198.51.100.0/24", hours=OFFICE)
    block = rule(DENY, "198.51.0.0/16")
    rules = ruleset(vendor, block, default=ALLOW)
    assert rules.decide("198.51.100.7", "ftp", SATURDAY_NOON) == schedule(vendor)
    assert rules.decide("198.51.7.7", "ftp", SATURDAY_NOON) == by_network(block)


def test_out_of_hours_allow_before_a_broader_allow_lets_in() -> None:
    vendor = rule(ALLOW, "198.51.100.0/24", hours=OFFICE)
    wide = rule(ALLOW, "198.51.0.0/16")
    assert ruleset(vendor, wide).decide("198.51.100.7", "ftp", SATURDAY_NOON) == by_network(wide)


def test_out_of_hours_allow_beside_an_active_deny_is_a_network_denial() -> None:
    # In its hours the allow would lose to the deny at the same prefix anyway.
    vendor = rule(ALLOW, "198.51.100.0/24", hours=OFFICE)
    deny = rule(DENY, "198.51.100.0/24")
    assert ruleset(vendor, deny).decide("198.51.100.7", "ftp", SATURDAY_NOON) == by_network(deny)


def test_out_of_hours_deny_does_not_count() -> None:
    night = rule(DENY, "198.51.100.0/24", hours="22:00-06:00")
    wide = rule(ALLOW, "198.51.0.0/16")
    rules = ruleset(night, wide)
    assert rules.decide("198.51.100.7", "ftp", MONDAY_NOON) == by_network(wide)
    assert rules.decide("198.51.100.7", "ftp", MONDAY_NOON.replace(hour=23)) == by_network(night)


def test_first_out_of_hours_allow_from_the_most_specific_side_is_named() -> None:
    narrow = rule(ALLOW, "198.51.100.0/28", hours=OFFICE)
    also = rule(ALLOW, "198.51.100.0/28", hours="Mon 08:00-09:00")
    wide = rule(ALLOW, "198.51.100.0/24", hours=OFFICE)
    assert ruleset(wide, also, narrow).decide("198.51.100.1", "ftp", SATURDAY_NOON) == (
        schedule(also)
    )


def test_out_of_hours_allow_for_another_listener_is_ignored() -> None:
    vendor = rule(ALLOW, "198.51.100.0/24", hours=OFFICE, listeners=["ftp"])
    rules = ruleset(vendor)
    assert rules.decide("198.51.100.7", "telnet", SATURDAY_NOON) == by_default()
    assert rules.decide("198.51.100.7", "ftp", SATURDAY_NOON) == schedule(vendor)


class _Clock(datetime):
    """Stands in for ``datetime`` in the engine: ``now`` is fixed, or refused."""

    fixed: datetime | None = None

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
        if cls.fixed is None:
            raise AssertionError("the clock was read")
        return cls.fixed


def test_clock_is_read_only_when_a_rule_with_hours_is_consulted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "datetime", _Clock)
    monkeypatch.setattr(_Clock, "fixed", None)
    vendor = rule(ALLOW, "198.51.100.0/24", hours=OFFICE)
    rules = ruleset(rule(DENY, "10.0.0.0/8"), vendor, rule(ALLOW, countries=["SE"]))
    assert rules.decide("10.1.1.1", "ftp").reason is Reason.NETWORK
    assert rules.decide("192.0.2.1", "ftp").reason is Reason.DEFAULT
    with pytest.raises(AssertionError, match="clock"):
        rules.decide("198.51.100.7", "ftp")
    monkeypatch.setattr(_Clock, "fixed", SATURDAY_NOON)
    assert rules.decide("198.51.100.7", "ftp") == schedule(vendor)
    monkeypatch.setattr(_Clock, "fixed", MONDAY_NOON)
    assert rules.decide("198.51.100.7", "ftp") == by_network(vendor)


# -- countries -----------------------------------------------------------------------------
GEO = {"175.16.199.1": "CN", "81.2.69.142": "GB", "89.160.20.113": "se", "2001:218::1": "JP"}


def geo(address: Address) -> str | None:
    return GEO.get(str(address))


def test_country_rules_after_networks() -> None:
    china = rule(DENY, countries=["CN", "RU"])
    sweden = rule(ALLOW, countries=["SE"])
    japan = rule(DENY, countries=["JP"])
    partner = rule(ALLOW, "175.16.199.0/24")
    rules = ruleset(china, sweden, japan, default=ALLOW, country_of=geo)
    assert rules.decide("175.16.199.1", "ftp") == decided(DENY, Reason.COUNTRY, china, "CN")
    assert rules.decide("::ffff:175.16.199.1", "ftp") == decided(DENY, Reason.COUNTRY, china, "CN")
    assert rules.decide("89.160.20.113", "ftp") == decided(ALLOW, Reason.COUNTRY, sweden, "SE")
    assert rules.decide("2001:218::1", "ftp") == decided(DENY, Reason.COUNTRY, japan, "JP")
    assert rules.decide("81.2.69.142", "ftp") == by_default(ALLOW)  # GB: no rule
    assert rules.decide("192.0.2.1", "ftp") == by_default(ALLOW)  # no country known
    with_partner = ruleset(china, partner, default=ALLOW, country_of=geo)
    assert with_partner.decide("175.16.199.1", "ftp") == by_network(partner)


def test_country_rules_need_a_country_lookup() -> None:
    assert ruleset(rule(DENY, countries=["CN"]), default=ALLOW).decide("175.16.199.1", "ftp") == (
        by_default(ALLOW)
    )


def test_country_lookup_gets_the_normalised_address() -> None:
    seen: list[Address] = []

    def spy(address: Address) -> str | None:
        seen.append(address)
        return None

    rules = ruleset(rule(DENY, countries=["CN"]), country_of=spy)
    for address in ("::ffff:175.16.199.1", "175.16.199.1", "2001:218::1"):
        rules.decide(address, "ftp")
    assert seen == [
        ipaddress.IPv4Address("175.16.199.1"),
        ipaddress.IPv4Address("175.16.199.1"),
        ipaddress.IPv6Address("2001:218::1"),
    ]


def test_country_lookup_is_skipped_without_country_rules() -> None:
    def refuse(address: Address) -> str | None:
        raise AssertionError("looked up")

    assert ruleset(country_of=refuse).decide("175.16.199.1", "ftp") == by_default()


def test_deny_wins_among_country_rules_and_listeners_filter_them() -> None:
    allow_cn = rule(ALLOW, countries=["CN"])
    deny_cn_ftp = rule(DENY, countries=["cn"], listeners=["ftp"])
    rules = ruleset(allow_cn, deny_cn_ftp, country_of=geo)
    assert rules.decide("175.16.199.1", "ftp") == decided(DENY, Reason.COUNTRY, deny_cn_ftp, "CN")
    assert rules.decide("175.16.199.1", "telnet") == decided(ALLOW, Reason.COUNTRY, allow_cn, "CN")


def test_country_rules_with_hours() -> None:
    office_se = rule(ALLOW, countries=["SE"], hours=OFFICE)
    rules = ruleset(office_se, country_of=geo)
    assert rules.decide("89.160.20.113", "ftp", MONDAY_NOON) == (
        decided(ALLOW, Reason.COUNTRY, office_se, "SE")
    )
    assert rules.decide("89.160.20.113", "ftp", SATURDAY_NOON) == schedule(office_se, "SE")
    # An out-of-hours network allow makes a country denial a schedule denial.
    vendor = rule(ALLOW, "175.16.199.0/24", hours=OFFICE)
    deny_cn = rule(DENY, countries=["CN"])
    rules = ruleset(vendor, deny_cn, default=ALLOW, country_of=geo)
    assert rules.decide("175.16.199.1", "ftp", SATURDAY_NOON) == schedule(vendor)
    assert rules.decide("175.16.199.1", "ftp", MONDAY_NOON) == by_network(vendor)


# -- privileged, counts, bad rules -------------------------------------------------------------
def test_privileged() -> None:
    rules = ruleset(privileged=["10.1.1.0/24", "2001:db8::/32", "192.0.2.7"])
    assert rules.is_privileged("10.1.1.200")
    assert rules.is_privileged("::ffff:10.1.1.200")
    assert rules.is_privileged(ipaddress.IPv4Address("192.0.2.7"))
    assert rules.is_privileged("2001:db8:ffff::1")
    assert not rules.is_privileged("10.1.2.1")
    assert not rules.is_privileged("192.0.2.8")
    assert not rules.is_privileged("2001:db9::1")
    assert not ruleset().is_privileged("10.1.1.1")


def test_counts() -> None:
    spec = RulesSpec(
        rules=(
            rule(ALLOW, "10.0.0.0/8"),
            rule(DENY, "2001:db8::/32"),
            rule(DENY, countries=["CN", "RU"]),
            rule(ALLOW, countries=["cn"]),
        ),
        privileged=(parse_network("10.1.1.0/24"),),
        files=("gatekeeper.yaml", "rules.d/main.yaml", "drop.txt"),
    )
    assert RuleSet.build(spec).counts() == {
        "rules": 4,
        "networks": 2,
        "countries": 2,
        "privileged": 1,
        "files": 3,
    }


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Rule(DENY, Source(FILE, 7)), "no network or country"),
        (
            Rule(DENY, Source(FILE, 7), parse_network("10.0.0.0/8"), frozenset({"CN"})),
            "both a network and countries",
        ),
    ],
)
def test_rule_must_be_a_network_or_countries(bad: Rule, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        ruleset(bad)
    assert str(caught.value).startswith(f"{FILE}:7: ")


# -- against a brute-force reference ---------------------------------------------------------
LISTENERS = ["ftp", "telnet", "tcp"]
COUNTRIES = ["CN", "RU", "SE"]
HOURS = [None, OFFICE, "Sat-Sun", "22:00-06:00"]
NOWS = [MONDAY_NOON, SATURDAY_NOON, datetime(2026, 11, 25, 23, 30), datetime(2026, 11, 29, 23, 59)]


def fake_country(address: Address) -> str | None:
    return [*COUNTRIES, None][int(address) % (len(COUNTRIES) + 1)]


def reference(
    spec: RulesSpec,
    country_of: Callable[[Address], str | None] | None,
    address: str | Address,
    listener: str,
    now: datetime,
) -> Decision:
    """The precedence of PRODUCT.md, "Match rules", written the plain way."""
    client = normalise_address(address)
    waiting: tuple[Rule, str] | None = None

    def weigh(level: list[Rule], reason: Reason, match: Callable[[Rule], str]) -> Decision | None:
        nonlocal waiting
        mine = [r for r in level if r.applies_to(listener)]
        active = [r for r in mine if r.hours is None or r.hours.contains(now)]
        winners = [r for r in active if r.action is DENY] or active
        if winners:
            win = winners[0]
            if win.action is DENY and waiting is not None:
                return decided(DENY, Reason.SCHEDULE, waiting[0], waiting[1])
            return decided(win.action, reason, win, match(win))
        idle = [r for r in mine if r not in active and r.action is ALLOW]
        if waiting is None and idle:
            waiting = (idle[0], match(idle[0]))
        return None

    containing = [r for r in spec.rules if r.network is not None and client in r.network]
    for length in sorted({r.network.prefixlen for r in containing if r.network}, reverse=True):
        level = [r for r in containing if r.network and r.network.prefixlen == length]
        found = weigh(level, Reason.NETWORK, lambda r: str(r.network))
        if found is not None:
            return found
    code = country_of(client) if country_of is not None else None
    if code is not None:
        level = [r for r in spec.rules if code.upper() in {c.upper() for c in r.countries}]
        found = weigh(level, Reason.COUNTRY, lambda r: code.upper())
        if found is not None:
            return found
    if spec.default is DENY and waiting is not None:
        return decided(DENY, Reason.SCHEDULE, waiting[0], waiting[1])
    return Decision(spec.default, Reason.DEFAULT, None, spec.default_source, None)


@st.composite
def random_networks(draw: st.DrawFn) -> Network:
    """Networks cut from a few fixed addresses, so that they nest, repeat and touch."""
    base = draw(st.sampled_from(["10.66.6.6", "10.66.200.1", "2001:db8::6", "2001:db8:8000::1"]))
    address = ipaddress.ip_address(base)
    length = draw(st.integers(0, address.max_prefixlen))
    return ipaddress.ip_network(f"{address}/{length}", strict=False)


@st.composite
def random_rules(draw: st.DrawFn) -> Rule:
    network = draw(st.none() | random_networks())
    countries = [] if network else draw(st.lists(st.sampled_from(COUNTRIES), min_size=1))
    return Rule(
        draw(st.sampled_from([ALLOW, DENY])),
        Source(FILE, draw(st.integers(1, 10_000))),
        network=network,
        countries=frozenset(countries),
        listeners=draw(st.none() | st.sets(st.sampled_from(LISTENERS)).map(frozenset)),
        hours=draw(st.sampled_from(HOURS).map(lambda h: None if h is None else Hours.parse(h))),
    )


@st.composite
def random_specs(draw: st.DrawFn) -> RulesSpec:
    return RulesSpec(
        default=draw(st.sampled_from([ALLOW, DENY])),
        default_source=draw(st.sampled_from([None, DEFAULT_SOURCE])),
        rules=tuple(draw(st.lists(random_rules(), max_size=12))),
    )


def clients(spec: RulesSpec) -> list[str | Address]:
    """Each network's edges and their neighbours, IPv4 also as IPv4-mapped IPv6."""
    found: list[str | Address] = ["10.66.6.6", "2001:db8::6", "0.0.0.0", "::"]
    for r in spec.rules:
        if r.network is None:
            continue
        make = ipaddress.IPv4Address if r.network.version == 4 else ipaddress.IPv6Address
        first, last = int(r.network.network_address), int(r.network.broadcast_address)
        for value in (first - 1, first, last, last + 1):
            if 0 <= value < 1 << r.network.max_prefixlen:
                address = make(value)
                found += [str(address), address]
                if address.version == 4:
                    found.append(f"::ffff:{address}")
    return found


@settings(max_examples=200, deadline=None)
@given(spec=random_specs(), geo_on=st.booleans())
def test_decide_matches_reference(spec: RulesSpec, geo_on: bool) -> None:
    country_of = fake_country if geo_on else None
    built = RuleSet.build(spec, country_of)
    for address in clients(spec):
        for listener in LISTENERS:
            for now in NOWS:
                expected = reference(spec, country_of, address, listener, now)
                assert built.decide(address, listener, now) == expected, (address, listener, now)
