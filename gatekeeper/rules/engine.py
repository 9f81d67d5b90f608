"""The decision at accept: which rule lets a client address in or keeps it out.

Precedence (PRODUCT.md, "Match rules"; bans are checked before, by another layer): the
most specific matching network (longest prefix; at equal prefix ``deny`` wins), then the
country rules, then the files' ``default``. A rule counts only on the listeners it names
and inside its hours; a denial where an allow rule was out of its hours is a ``schedule``
denial naming that allow rule. ``RuleSet`` is immutable: a reload builds a new one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from socket import AF_INET, AF_INET6, inet_pton

from gatekeeper.errors import ConfigError, Problem
from gatekeeper.rules.model import Action, Address, Network, Reason, Rule, RulesSpec, Source
from gatekeeper.rules.trie import PrefixTable, RadixTrie
from gatekeeper.settings import normalise_address

CountryOf = Callable[[Address], str | None]  # address -> ISO country code, or None

_IPV4_BITS = 32
_IPV6_BITS = 128
_IPV4_MAPPED_BITS = _IPV6_BITS - _IPV4_BITS  # ::ffff:0:0/96 holds the IPv4-mapped addresses
_IPV4_MASK = (1 << _IPV4_BITS) - 1
_IPV4_MAPPED_TAG = 0xFFFF  # the 16 bits above an IPv4 address in ::ffff:a.b.c.d


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a connection, and why."""

    action: Action
    reason: Reason  # NETWORK, COUNTRY, DEFAULT or SCHEDULE (other layers make the rest)
    rule: Rule | None  # the deciding rule; None for a default decision
    source: Source | None  # where the rule, or the ``default:``, was written
    match: str | None  # the network or country code that matched; None for default

    @property
    def allowed(self) -> bool:
        return self.action is Action.ALLOW


class RuleSet:
    """Rules compiled for lookup: IPv4 and IPv6 prefix tables, country index, privileged."""

    __slots__ = (
        "_countries",
        "_country_of",
        "_decided",
        "_default",
        "_networks",
        "_privileged",
        "spec",
    )

    def __init__(
        self,
        spec: RulesSpec,
        networks: tuple[PrefixTable[Rule], PrefixTable[Rule]],
        countries: dict[str, tuple[Rule, ...]],
        privileged: tuple[PrefixTable[Network], PrefixTable[Network]],
        country_of: CountryOf | None,
    ) -> None:
        """Use ``build``. Table pairs are (IPv4, IPv6); ``countries`` maps upper-case codes."""
        self.spec = spec
        self._networks = networks
        self._countries = countries
        self._privileged = privileged
        self._country_of = country_of
        self._default = Decision(spec.default, Reason.DEFAULT, None, spec.default_source, None)
        # Decisions made so far, by id(rule) (by network) or (id(rule), code) (by country):
        # a flood hits the same rules again and again. ``spec`` keeps every rule, and so its
        # id, alive; the memo holds at most one entry per rule and country code.
        self._decided: dict[int | tuple[int, str], Decision] = {}

    @classmethod
    def build(cls, spec: RulesSpec, country_of: CountryOf | None = None) -> RuleSet:
        """Compile ``spec``; ``country_of`` maps an address to its country code, or None.

        Raises ConfigError for a rule with both a network and countries, or neither.
        """
        networks: tuple[RadixTrie[Rule], RadixTrie[Rule]] = (
            RadixTrie(_IPV4_BITS),
            RadixTrie(_IPV6_BITS),
        )
        countries: dict[str, list[Rule]] = {}
        for rule in spec.rules:
            if (rule.network is None) == (not rule.countries):
                what = "both a network and countries" if rule.countries else "no network or country"
                raise ConfigError(Problem(rule.source.file, rule.source.line, f"rule has {what}"))
            if rule.network is not None:
                is_v6, prefix, length = _key(rule.network)
                networks[is_v6].add(prefix, length, rule)
            else:
                for code in rule.countries:
                    countries.setdefault(code.upper(), []).append(rule)
        privileged: tuple[RadixTrie[Network], RadixTrie[Network]] = (
            RadixTrie(_IPV4_BITS),
            RadixTrie(_IPV6_BITS),
        )
        for network in spec.privileged:
            is_v6, prefix, length = _key(network)
            privileged[is_v6].add(prefix, length, network)
        return cls(
            spec,
            (networks[0].compile(), networks[1].compile()),
            {code: tuple(rules) for code, rules in countries.items()},
            (privileged[0].compile(), privileged[1].compile()),
            country_of,
        )

    def decide(
        self, address: str | Address, listener: str, now: datetime | None = None
    ) -> Decision:
        """Allow or deny ``address`` on ``listener`` at ``now`` (default: the local time now).

        Raises ValueError if ``address`` is not an IP address.
        """
        is_v6, value = _locate(address)
        waiting: tuple[Rule, str] | None = None  # first allow met out of its hours, and match
        for _length, rules in self._networks[is_v6].lookup(value):
            winner, idle, now = _pick(rules, listener, now)
            if winner is not None:
                return self._conclude(winner, None, waiting)
            if waiting is None and idle is not None:
                waiting = (idle, idle.match)
        if self._countries and self._country_of is not None:
            country = self._country_of(_address(is_v6, value))
            code = country.upper() if country is not None else None
            by_code = self._countries.get(code) if code is not None else None
            if code is not None and by_code is not None:
                winner, idle, now = _pick(by_code, listener, now)
                if winner is not None:
                    return self._conclude(winner, code, waiting)
                if waiting is None and idle is not None:
                    waiting = (idle, code)
        if waiting is not None and self._default.action is Action.DENY:
            return _schedule(waiting)
        return self._default

    def is_privileged(self, address: str | Address) -> bool:
        """Is ``address`` in the ``privileged`` list (skips FTP user and command checks)?"""
        is_v6, value = _locate(address)
        return bool(self._privileged[is_v6].lookup(value))

    def _conclude(self, rule: Rule, code: str | None, waiting: tuple[Rule, str] | None) -> Decision:
        """The decision of ``rule``, matched by network or by country ``code``; a schedule
        denial instead if it denies while an allow rule is ``waiting`` for its hours."""
        if waiting is not None and rule.action is Action.DENY:
            return _schedule(waiting)
        key = id(rule) if code is None else (id(rule), code)
        decision = self._decided.get(key)
        if decision is None:
            if code is None:
                decision = Decision(rule.action, Reason.NETWORK, rule, rule.source, rule.match)
            else:
                decision = Decision(rule.action, Reason.COUNTRY, rule, rule.source, code)
            self._decided[key] = decision
        return decision

    def counts(self) -> dict[str, int]:
        """Sizes for the reload log line: rules, network rules, country codes, privileged
        networks, files read."""
        spec = self.spec
        return {
            "rules": len(spec.rules),
            "networks": sum(rule.network is not None for rule in spec.rules),
            "countries": len(self._countries),
            "privileged": len(spec.privileged),
            "files": len(spec.files),
        }


def _pick(
    rules: Iterable[Rule], listener: str, now: datetime | None
) -> tuple[Rule | None, Rule | None, datetime | None]:
    """Weigh the rules of one level (one prefix, or the country rules) in file order.

    Returns the winner (first active deny, else first active allow, else None), the first
    allow that applies but is out of its hours, and ``now``, read from the clock if an
    hours rule needed it.
    """
    winner: Rule | None = None
    idle: Rule | None = None
    for rule in rules:
        if not rule.applies_to(listener):
            continue
        if rule.hours is not None:
            if now is None:
                now = datetime.now()
            if not rule.hours.contains(now):
                if idle is None and rule.action is Action.ALLOW:
                    idle = rule
                continue
        if rule.action is Action.DENY:
            return rule, idle, now
        if winner is None:
            winner = rule
    return winner, idle, now


def _schedule(waiting: tuple[Rule, str]) -> Decision:
    """Denied because the allow rule that would have let the address in is out of its hours."""
    rule, match = waiting
    return Decision(Action.DENY, Reason.SCHEDULE, rule, rule.source, match)


def _locate(address: str | Address) -> tuple[bool, int]:
    """(is IPv6, the address as an int); IPv4-mapped IPv6 counts as IPv4. Raises ValueError."""
    if isinstance(address, str):
        try:
            if ":" not in address:
                return False, int.from_bytes(inet_pton(AF_INET, address), "big")
            value = int.from_bytes(inet_pton(AF_INET6, address), "big")
        except OSError:
            pass  # a zone id, or not an address: ipaddress handles it or gives the error
        else:
            if value >> _IPV4_BITS == _IPV4_MAPPED_TAG:
                return False, value & _IPV4_MASK
            return True, value
    normal = normalise_address(address)
    return isinstance(normal, ipaddress.IPv6Address), int(normal)


def _address(is_v6: bool, value: int) -> Address:
    return ipaddress.IPv6Address(value) if is_v6 else ipaddress.IPv4Address(value)


def _key(network: Network) -> tuple[bool, int, int]:
    """(is IPv6, prefix, length) of a network; ``::ffff:a.b.c.d/n`` (n >= 96) is IPv4."""
    prefix = int(network.network_address)
    length = network.prefixlen
    if isinstance(network, ipaddress.IPv4Network):
        return False, prefix, length
    if length >= _IPV4_MAPPED_BITS and prefix >> _IPV4_BITS == _IPV4_MAPPED_TAG:
        return False, prefix & _IPV4_MASK, length - _IPV4_MAPPED_BITS
    return True, prefix, length
