"""The decision at accept: which rule lets a client address in or keeps it out.

Precedence (PRODUCT.md, "Match rules"; bans are checked before, by another layer): the
most specific matching network (longest prefix; at equal prefix ``deny`` wins), then the
country rules, then the files' ``default``. A rule counts only on the listeners it names
and inside its hours; a denial where an allow rule was out of its hours is a ``schedule``
denial naming that allow rule. ``RuleSet`` is immutable: a reload builds a new one.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import accumulate
from socket import AF_INET, AF_INET6, inet_pton
from typing import Generic, TypeVar

from gatekeeper.errors import ConfigError, Problem
from gatekeeper.rules.model import (
    Action,
    Address,
    ListedRules,
    Network,
    Reason,
    Rule,
    RulesSpec,
    Source,
)
from gatekeeper.rules.trie import Chain, PrefixTable, compile_prefixes
from gatekeeper.settings import normalise_address

CountryOf = Callable[[Address], str | None]  # address -> ISO country code, or None
V = TypeVar("V")
_Settled = tuple[Callable[[int], int], list["Decision | None"]]  # a table's interval, decisions

_IPV4_BITS = 32
_IPV6_BITS = 128
_IPV4_MAPPED_BITS = _IPV6_BITS - _IPV4_BITS  # ::ffff:0:0/96 holds the IPv4-mapped addresses
_IPV4_MASK = (1 << _IPV4_BITS) - 1
_IPV4_MAPPED_TAG = 0xFFFF  # the 16 bits above an IPv4 address in ::ffff:a.b.c.d
_IPV4_MAPPED_FIRST = _IPV4_MAPPED_TAG << _IPV4_BITS  # ::ffff:0.0.0.0
_IPV4_MAPPED_LAST = _IPV4_MAPPED_FIRST | _IPV4_MASK  # ::ffff:255.255.255.255
_from_bytes = int.from_bytes


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a connection, and why."""

    action: Action
    reason: Reason  # NETWORK, COUNTRY, DEFAULT or SCHEDULE (other layers make the rest)
    rule: Rule | None  # the deciding rule; None for a default decision
    source: Source | None  # where the rule, or the ``default:``, was written
    match: str | None  # the network or country code that matched; None for default
    # (reason, "file:line") as a rejection records them: made once, not per connection.
    texts: tuple[str, str | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        source = None if self.source is None else str(self.source)
        object.__setattr__(self, "texts", (self.reason.value, source))

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
        "_firsts",
        "_networks",
        "_privileged",
        "_settled",
        "spec",
    )

    def __init__(
        self,
        spec: RulesSpec,
        networks: tuple[PrefixTable[int], PrefixTable[int]],
        countries: dict[str, tuple[Rule, ...]],
        privileged: tuple[PrefixTable[Network], PrefixTable[Network]],
        country_of: CountryOf | None,
    ) -> None:
        """Use ``build``. Table pairs are (IPv4, IPv6) and hold rule numbers (see
        ``_rule``); ``countries`` maps upper-case codes."""
        self.spec = spec
        self._networks = networks
        # The number of the first rule of each of spec.entries: a rule takes one number, a
        # network list one per network, its IPv4 networks first.
        self._firsts: list[int] = list(accumulate((_size(x) for x in spec.entries), initial=0))
        self._countries = countries
        self._privileged = privileged
        self._country_of = country_of
        self._default = Decision(spec.default, Reason.DEFAULT, None, spec.default_source, None)
        # Decisions made so far, by id(rule) (by network) or (id(rule), code) (by country):
        # a flood hits the same rules again and again. ``spec`` keeps every rule, and so its
        # id, alive; the memo holds at most one entry per rule and country code.
        self._decided: dict[int | tuple[int, str], Decision] = {}
        # Per table (IPv4, IPv6): its ``interval`` and the decision for each interval, once
        # worked out, where it is the same for every listener at every time (see
        # ``_is_settled``); None until then.
        self._settled: tuple[_Settled, _Settled] = (
            (networks[0].interval, [None] * len(networks[0])),
            (networks[1].interval, [None] * len(networks[1])),
        )

    @classmethod
    def build(cls, spec: RulesSpec, country_of: CountryOf | None = None) -> RuleSet:
        """Compile ``spec``; ``country_of`` maps an address to its country code, or None.

        Raises ConfigError for a rule with both a network and countries, or neither.
        """
        networks = (_Prefixes[int](), _Prefixes[int]())  # IPv4, IPv6; of rule numbers
        countries: dict[str, list[Rule]] = {}
        number = 0
        for entry in spec.entries:
            if isinstance(entry, ListedRules):
                for is_v6, listed in ((False, entry.v4), (True, entry.v6)):
                    numbers = range(number, number + len(listed))
                    networks[is_v6].extend(listed.prefixes, listed.lengths, numbers)
                    number += len(listed)
                continue
            rule = entry
            network = rule.network
            if (network is None) == (not rule.countries):
                what = "both a network and countries" if rule.countries else "no network or country"
                raise ConfigError(Problem(rule.source.file, rule.source.line, f"rule has {what}"))
            if network is not None:
                is_v6, prefix, length = _key(network)
                networks[is_v6].add(prefix, length, number)
            else:
                for code in rule.countries:
                    countries.setdefault(code.upper(), []).append(rule)
            number += 1
        privileged = (_Prefixes[Network](), _Prefixes[Network]())
        for network in spec.privileged:
            is_v6, prefix, length = _key(network)
            privileged[is_v6].add(prefix, length, network)
        return cls(
            spec,
            (networks[0].compile(_IPV4_BITS), networks[1].compile(_IPV6_BITS)),
            {code: tuple(rules) for code, rules in countries.items()},
            (privileged[0].compile(_IPV4_BITS), privileged[1].compile(_IPV6_BITS)),
            country_of,
        )

    def decide(
        self, address: str | Address, listener: str, now: datetime | None = None
    ) -> Decision:
        """Allow or deny ``address`` on ``listener`` at ``now`` (default: the local time now).

        Raises ValueError if ``address`` is not an IP address.
        """
        is_v6, value = _locate(address)
        interval_of, settled = self._settled[is_v6]
        interval = interval_of(value)
        decision = settled[interval]
        if decision is None:
            decision = self._work_out(is_v6, value, interval, listener, now)
        return decision

    def _work_out(
        self, is_v6: bool, value: int, interval: int, listener: str, now: datetime | None
    ) -> Decision:
        """``decide`` for an address in ``interval`` of the IPv4 or IPv6 table, the long way;
        remembered for the interval where it holds for any listener at any time."""
        rule = self._rule
        chain = tuple(
            (length, tuple(map(rule, numbers)))
            for length, numbers in self._networks[is_v6].chain(interval)
        )
        decision = self._weigh(chain, is_v6, value, listener, now)
        if self._is_settled(chain):
            self._settled[is_v6][1][interval] = decision
        return decision

    def _rule(self, number: int) -> Rule:
        """The rule numbered ``number`` in ``spec.entries`` (see ``_firsts``)."""
        at = bisect_right(self._firsts, number) - 1
        entry = self.spec.entries[at]
        if not isinstance(entry, ListedRules):
            return entry
        index = number - self._firsts[at]
        ipv4 = len(entry.v4)
        return entry.rule(False, index) if index < ipv4 else entry.rule(True, index - ipv4)

    def _is_settled(self, chain: Chain[Rule]) -> bool:
        """Is the decision for addresses matching ``chain`` the same for every listener at
        every time? So when the most specific rules name no listener and no hours (one of
        them wins then, before any other level), or when no network rule matches and no
        country is looked up (the default decides)."""
        if not chain:
            return not (self._countries and self._country_of is not None)
        return all(rule.listeners is None and rule.hours is None for rule in chain[0][1])

    def _weigh(
        self, chain: Chain[Rule], is_v6: bool, value: int, listener: str, now: datetime | None
    ) -> Decision:
        """The decision for an address matching the network rules in ``chain``."""
        waiting: tuple[Rule, str] | None = None  # first allow met out of its hours, and match
        for _length, rules in chain:
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
        return self._privileged[is_v6].covers(value)

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
            "rules": self._firsts[-1],
            "networks": sum(
                len(x) if isinstance(x, ListedRules) else x.network is not None
                for x in spec.entries
            ),
            "countries": len(self._countries),
            "privileged": len(spec.privileged),
            "files": len(spec.files),
        }


class _Prefixes(Generic[V]):
    """Prefixes gathered for one table, in the order given: ``compile_prefixes`` input."""

    __slots__ = ("lengths", "prefixes", "values")

    def __init__(self) -> None:
        self.prefixes: list[int] = []
        self.lengths: list[int] = []
        self.values: list[V] = []

    def add(self, prefix: int, length: int, value: V) -> None:
        self.prefixes.append(prefix)
        self.lengths.append(length)
        self.values.append(value)

    def extend(self, prefixes: Iterable[int], lengths: Iterable[int], values: Iterable[V]) -> None:
        self.prefixes += prefixes
        self.lengths += lengths
        self.values += values

    def compile(self, bits: int) -> PrefixTable[V]:
        return compile_prefixes(bits, self.prefixes, self.lengths, self.values)


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


def _size(entry: Rule | ListedRules) -> int:
    """How many rules an entry of ``RulesSpec.entries`` stands for."""
    return len(entry) if isinstance(entry, ListedRules) else 1


def _schedule(waiting: tuple[Rule, str]) -> Decision:
    """Denied because the allow rule that would have let the address in is out of its hours."""
    rule, match = waiting
    return Decision(Action.DENY, Reason.SCHEDULE, rule, rule.source, match)


def _locate(address: str | Address) -> tuple[bool, int]:
    """(is IPv6, the address as an int); IPv4-mapped IPv6 counts as IPv4. Raises ValueError."""
    if isinstance(address, str):  # the daemon's case: text from getpeername
        try:
            if ":" not in address:
                return False, _from_bytes(inet_pton(AF_INET, address), "big")
            value = _from_bytes(inet_pton(AF_INET6, address), "big")
        except OSError:
            pass  # a zone id, or not an address: ipaddress handles it or gives the error
        else:
            if _IPV4_MAPPED_FIRST <= value <= _IPV4_MAPPED_LAST:
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
