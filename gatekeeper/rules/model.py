"""Plain frozen data the rule engine is built from (the config loader produces these)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from gatekeeper.rules.hours import Hours

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class Reason(StrEnum):
    """Why a connection was allowed or rejected; stored in the log and shown in reports."""

    NETWORK = "network"
    COUNTRY = "country"
    DEFAULT = "default"
    SCHEDULE = "schedule"
    BAN = "ban"
    USER = "user"
    LIMIT = "limit"
    PROXY = "proxy"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a rule was written: shown by ``lookup`` and stored with each rejection."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One allow/deny entry: a network or a set of countries, maybe limited to listeners/hours."""

    action: Action
    source: Source
    network: Network | None = None
    countries: frozenset[str] = frozenset()
    listeners: frozenset[str] | None = None  # None: every listener
    hours: Hours | None = None  # None: at all times
    comment: str | None = None

    def applies_to(self, listener: str) -> bool:
        return self.listeners is None or listener in self.listeners

    @property
    def match(self) -> str:
        """What this rule matches, as shown to an administrator."""
        if self.network is not None:
            return str(self.network)
        return ",".join(sorted(self.countries))


@dataclass(frozen=True, slots=True)
class ListedNetworks:
    """The IPv4 or the IPv6 networks of a network list as ints, in list order."""

    is_v6: bool
    prefixes: Sequence[int] = field(repr=False)  # each network's first address
    lengths: Sequence[int] = field(repr=False)  # its prefix length
    lines: Sequence[int] = field(repr=False)  # the line it is on
    # Networks their ints do not give back exactly (an IPv6 zone id), by index.
    exact: dict[int, Network] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.prefixes)

    def network(self, index: int) -> Network:
        found = self.exact.get(index)
        if found is not None:
            return found
        make = ipaddress.IPv6Network if self.is_v6 else ipaddress.IPv4Network
        return make((self.prefixes[index], self.lengths[index]))

    def pairs(self) -> list[tuple[int, int]]:
        """(line, index) of each network."""
        return [(line, index) for index, line in enumerate(self.lines)]

    def networks(self) -> list[tuple[Network, int]]:
        """(network, line) of each network."""
        make = ipaddress.IPv6Network if self.is_v6 else ipaddress.IPv4Network
        exact = self.exact
        return [
            (exact[index] if index in exact else make((prefix, length)), line)
            for index, (prefix, length, line) in enumerate(
                zip(self.prefixes, self.lengths, self.lines, strict=True)
            )
        ]


@dataclass(frozen=True, slots=True)
class ListedRules:
    """A ``file:`` entry of a rule file: the rule ``template`` once for each listed network.

    A list may have 100,000 lines. As a rule, a source and a network object each, they
    would take most of a reload's time and tens of megabytes, and every full garbage
    collection would scan them all (over 100 ms, the event loop stalled). So they stay ints
    and are made into rules only when asked for: the rules that decide, or ``rules`` for
    all of them. ``rule`` gives the same object each time.
    """

    template: Rule  # action, listeners, hours, comment; source: the ``file:`` entry
    file: str  # the list, as its rules' sources name it
    v4: ListedNetworks
    v6: ListedNetworks
    _made: dict[tuple[bool, int], Rule] = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6)

    def rule(self, is_v6: bool, index: int) -> Rule:
        """The rule for network ``index`` of the IPv6 or IPv4 networks."""
        key = (is_v6, index)
        made = self._made.get(key)
        if made is None:
            listed = self.v6 if is_v6 else self.v4
            source = Source(self.file, listed.lines[index])
            made = replace(self.template, source=source, network=listed.network(index))
            self._made[key] = made
        return made

    def rules(self) -> list[Rule]:
        """Every rule, in list order."""
        order = sorted(
            [(line, False, index) for line, index in self.v4.pairs()]
            + [(line, True, index) for line, index in self.v6.pairs()]
        )
        return [self.rule(is_v6, index) for _, is_v6, index in order]


@dataclass(frozen=True, slots=True)
class BanPolicy:
    """Automatic bans after failed FTP logins (``after`` failures ``within`` seconds)."""

    after: int = 3
    within: float = 600.0
    duration: float = 3600.0
    ipv6_prefix: int = 64


@dataclass(frozen=True, slots=True)
class UserPolicy:
    commands: frozenset[str]  # upper-case verbs this user may send beyond housekeeping


@dataclass(frozen=True, slots=True)
class FtpPolicy:
    deny_users: tuple[str, ...] = ()  # upper-case patterns, ``*`` wildcards
    users: dict[str, UserPolicy] = field(default_factory=dict)  # upper-case user names
    ban: BanPolicy | None = None


@dataclass(frozen=True, slots=True, init=False)
class RulesSpec:
    """Everything all rule files say, merged: what ``RuleSet.build`` takes."""

    default: Action
    default_source: Source | None  # None: no file set ``default:``
    # Allow and deny, networks and countries, in file order; a network list as one entry.
    entries: tuple[Rule | ListedRules, ...]
    privileged: tuple[Network, ...]
    ftp: FtpPolicy
    files: tuple[str, ...]  # every file read, rule files and network lists

    def __init__(
        self,
        default: Action = Action.DENY,
        default_source: Source | None = None,
        rules: Iterable[Rule | ListedRules] = (),
        privileged: tuple[Network, ...] = (),
        ftp: FtpPolicy | None = None,
        files: tuple[str, ...] = (),
    ) -> None:
        """``rules``: the ``entries``, rules and network lists."""
        set_ = object.__setattr__
        set_(self, "default", default)
        set_(self, "default_source", default_source)
        set_(self, "entries", tuple(rules))
        set_(self, "privileged", privileged)
        set_(self, "ftp", FtpPolicy() if ftp is None else ftp)
        set_(self, "files", files)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every rule in file order, a network list's one per network. Makes the rules of
        the lists that have not been made yet: ``RuleSet`` and counts go by ``entries``."""
        found: list[Rule] = []
        for entry in self.entries:
            if isinstance(entry, ListedRules):
                found += entry.rules()
            else:
                found.append(entry)
        return tuple(found)
