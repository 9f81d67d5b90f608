"""Plain frozen data the rule engine is built from (the config loader produces these)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class RulesSpec:
    """Everything all rule files say, merged: what ``RuleSet.build`` takes."""

    default: Action = Action.DENY
    default_source: Source | None = None  # None: no file set ``default:``
    rules: tuple[Rule, ...] = ()  # allow and deny, networks and countries, in file order
    privileged: tuple[Network, ...] = ()
    ftp: FtpPolicy = field(default_factory=FtpPolicy)
    files: tuple[str, ...] = ()  # every file read, rule files and network lists
