"""Runtime settings as plain frozen dataclasses: what the core receives from the config loader.

Standard library only, so ``net/`` and ``rules/`` can use these without pydantic.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
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
    # FTP: from accept to the upstream's 230, or the session is cut (421). ProFTPD's
    # TimeoutLogin has the same default: a client trickling bytes keeps ``idle`` from
    # firing, and must not hold a connection to the IBM i open for ever before signing on.
    login: float = 300.0


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


PASSWORD_SCHEME = "pbkdf2_sha256"
PASSWORD_DIGEST_SIZE = 32  # bytes of a PBKDF2-HMAC-SHA256 key
MAX_PASSWORD_ITERATIONS = 10_000_000  # more makes every login of the web pages take seconds
_SALT = re.compile(r"[A-Za-z0-9./+=_-]{8,128}")


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """``pbkdf2_sha256$ITERATIONS$SALT$HASH``: the salt is used as written (UTF-8), the hash
    is the base64 of the 32-byte derived key (the format Django writes)."""

    iterations: int
    salt: str
    digest: bytes

    def __str__(self) -> str:
        encoded = base64.b64encode(self.digest).decode("ascii")
        return f"{PASSWORD_SCHEME}${self.iterations}${self.salt}${encoded}"


def parse_password_hash(text: str) -> PasswordHash:
    """Check and split a password hash line; ValueError says what to write instead."""
    hint = "write the line that 'gatekeeper web --hash-password' prints"
    parts = text.strip().split("$")
    if len(parts) != 4 or parts[0] != PASSWORD_SCHEME:
        raise ValueError(
            f"bad password_hash: expected {PASSWORD_SCHEME}$ITERATIONS$SALT$HASH; {hint}"
        )
    _, iterations, salt, encoded = parts
    if not (iterations.isascii() and iterations.isdigit() and not iterations.startswith("0")):
        raise ValueError(f"bad password_hash: iterations {iterations!r} is not a number; {hint}")
    if not 1 <= int(iterations) <= MAX_PASSWORD_ITERATIONS:
        raise ValueError(
            f"bad password_hash: iterations must be 1 to {MAX_PASSWORD_ITERATIONS}; {hint}"
        )
    if not _SALT.fullmatch(salt):
        raise ValueError(
            f"bad password_hash: the salt must be 8 to 128 letters, digits or ./+=_-; {hint}"
        )
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"bad password_hash: the hash is not base64; {hint}") from None
    if len(digest) != PASSWORD_DIGEST_SIZE:
        raise ValueError(
            f"bad password_hash: the hash is {len(digest)} bytes, not {PASSWORD_DIGEST_SIZE}; "
            f"{hint}"
        )
    return PasswordHash(int(iterations), salt, digest)


@dataclass(frozen=True, slots=True)
class WebAuth:
    """HTTP Basic credentials the report pages require (``web: {user, password_hash}``)."""

    user: str
    password_hash: PasswordHash


# RFC 5424 facility codes accepted for ``syslog.facility`` (section 6.2.1).
SYSLOG_FACILITIES = {
    "auth": 4,
    "authpriv": 10,
    **{f"local{n}": 16 + n for n in range(8)},
}


@dataclass(frozen=True, slots=True)
class SyslogSettings:
    """Forwarding of rejections and bans to a SIEM as RFC 5424 syslog."""

    transport: str  # "udp" | "tcp" (octet-counted framing, RFC 6587)
    host: str
    port: int
    facility: int = SYSLOG_FACILITIES["authpriv"]
    app_name: str = "gatekeeper"
    hostname: str | None = None  # None: the machine's host name

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole daemon configuration, validated."""

    path: Path  # the config file itself
    database: Path
    rule_globs: tuple[str, ...]  # as written, resolved against the config file's folder
    listeners: tuple[ListenerSettings, ...]
    geoip: GeoipSettings | None = None
    web_listen: HostPort = HostPort("127.0.0.1", 8020)
    web_auth: WebAuth | None = None  # None: no login (only allowed on a loopback address)
    timeouts: Timeouts = field(default_factory=Timeouts)
    retention: float = 400 * 86400.0
    mode: Mode = Mode.ENFORCE
    metrics_listen: HostPort | None = None  # where /metrics is served; None: not served
    status_file: Path | None = None  # what ``gatekeeper status`` reads; written by the daemon
    syslog: SyslogSettings | None = None  # forwarding to a SIEM; None: none

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
