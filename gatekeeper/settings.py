"""Runtime settings as plain frozen dataclasses: what the core receives from the config loader.

Standard library only, so ``net/`` and ``rules/`` can use these without pydantic.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from gatekeeper.rules.model import Network, Source


class Protocol(StrEnum):
    FTP = "ftp"
    TELNET = "telnet"
    TCP = "tcp"


class RejectStyle(StrEnum):
    REPLY = "reply"  # FTP: "421 Service not available, closing control connection."
    CLOSE = "close"  # plain FIN
    RESET = "reset"  # RST


class Mode(StrEnum):
    ENFORCE = "enforce"
    MONITOR = "monitor"  # decide and record "would reject", but let the connection through


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0  # upstream connect
    idle: float = 1800.0  # no byte either way for this long closes a session
    drain: float = 30.0  # grace period for sessions at stop
    proxy_header: float = 5.0  # a trusted sender must send its PROXY header within this


@dataclass(frozen=True, slots=True)
class Limits:
    per_address: int | None = None  # concurrent sessions per client address
    rate: tuple[int, float] | None = None  # (connections, seconds) per client address


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """FTP ``AUTH TLS``: refuse it (534), or end TLS at gatekeeper with this certificate."""

    mode: str = "refuse"  # refuse | terminate
    certificate: Path | None = None
    key: Path | None = None
    upstream: str = (
        "plain"  # plain | tls: how gatekeeper talks to the upstream once a client is on TLS
    )
    upstream_ca: Path | None = (
        None  # CA bundle that signed the upstream's certificate (default: system)
    )


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    name: str
    protocol: Protocol
    listen: HostPort
    upstream: HostPort
    reject: RejectStyle
    source: Source
    mode: Mode = Mode.ENFORCE
    proxy_protocol: tuple[Network, ...] = ()  # trusted PROXY senders; empty: PROXY off
    passive_ports: tuple[int, int] | None = None
    passive_address: str | None = None
    tls: TlsSettings = field(default_factory=TlsSettings)
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    enforce_on_reload: bool = False
    allow_foreign_data: bool = False  # FTP: data connections from other addresses (NAT pools)

    @property
    def letter(self) -> str:
        """Listener letter in reports: F for FTP, T for Telnet, else the name."""
        return {Protocol.FTP: "F", Protocol.TELNET: "T"}.get(self.protocol, self.name)


@dataclass(frozen=True, slots=True)
class GeoipSettings:
    city: Path | None = None
    asn: Path | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole daemon configuration, validated."""

    path: Path  # the config file itself
    database: Path
    rule_globs: tuple[str, ...]  # as written, resolved against the config file's folder
    listeners: tuple[ListenerSettings, ...]
    geoip: GeoipSettings | None = None
    web_listen: HostPort = HostPort("127.0.0.1", 8020)
    timeouts: Timeouts = field(default_factory=Timeouts)
    retention: float = 400 * 86400.0
    mode: Mode = Mode.ENFORCE

    def listener(self, name: str) -> ListenerSettings | None:
        return next((x for x in self.listeners if x.name == name), None)


def parse_network(text: str) -> Network:
    """A CIDR or bare address (/32, /128); host bits must be zero. Raises ValueError."""
    text = text.strip()
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"bad network {text!r}: {exc}") from None
    mapped = net.network_address.ipv4_mapped if isinstance(net, ipaddress.IPv6Network) else None
    if mapped is not None and net.prefixlen >= 96:
        # ::ffff:10.0.0.0/104 is the IPv4 network 10.0.0.0/8: store it that way.
        return ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}")
    return net


def normalise_host(host: str) -> str:
    """Address text as compared and recorded: IPv4-mapped IPv6 becomes IPv4, a zone id goes."""
    if ":" not in host:
        return host
    host = host.split("%", 1)[0]
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def sockaddr_host(sockaddr: tuple[str, int] | tuple[str, int, int, int] | None) -> str:
    """The normalised host of a socket address (``getpeername``/``getsockname``)."""
    return normalise_host(sockaddr[0]) if sockaddr else ""


def normalise_address(
    addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """IPv4-mapped IPv6 (``::ffff:a.b.c.d``) becomes IPv4; a zone id is dropped."""
    if isinstance(addr, str):
        addr = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr
