"""What the network side tells the recorder. Plain data, standard library only.

The network side calls a ``Sink``; the recorder is one. Calls never block and never fail:
the sink aggregates in memory and writes batches on its own schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol


class Outcome(StrEnum):
    """How an accepted session ended."""

    CLOSED = "closed"  # either side closed normally
    IDLE = "idle-timeout"
    UPSTREAM_FAILED = "upstream-failed"  # could not connect to the upstream
    ERROR = "error"  # reset or socket error mid-session (the client's, or unknown)
    UPSTREAM_RESET = "upstream-reset"  # the upstream reset its connection mid-session
    LOGIN_TIMEOUT = "login-timeout"  # FTP: not signed on within timeouts.login
    SHUTDOWN = "shutdown"  # cut at stop after the drain period
    ENFORCED = "enforced"  # cut at reload because its address is now denied
    PROXY = "proxy"  # an untrusted peer sent a PROXY header after being let in
    # FTP sessions that ended normally say how the sign-on went:
    LOGGED_IN = "logged-in"
    LOGIN_FAILED = "login-failed"
    DENIED_USER = "denied-user"
    BANNED = "banned"


class Rejection(NamedTuple):
    """One refused connection (or FTP user). A named tuple, not a frozen dataclass: as
    immutable, and made five times faster, which a flood of them notices."""

    listener: str
    address: str  # the client address checked (PROXY-claimed when trusted), normalised
    reason: str  # a rules.model.Reason value
    rule: str | None  # "file:line" of the deciding rule, or None
    when: float  # time.time()
    monitor: bool = False  # True: "would reject", the connection was let through
    user: str | None = None  # FTP user name, upper-cased (reason "user")


@dataclass(frozen=True, slots=True)
class SessionRecord:
    listener: str
    address: str  # client address (PROXY-claimed when trusted)
    port: int
    start: float
    end: float
    outcome: Outcome
    upstream: str  # "host:port" of the upstream
    local: str | None  # gatekeeper's own "address:port" toward the upstream
    bytes_up: int = 0  # client -> upstream
    bytes_down: int = 0  # upstream -> client
    user: str | None = None
    files_sent: int = 0  # files the client downloaded (RETR)
    files_received: int = 0  # files the client uploaded (STOR, APPE, STOU)
    would_reject: str | None = None  # monitor mode: the reason it would have been rejected


@dataclass(frozen=True, slots=True)
class Login:
    """An FTP sign-on attempt: USER then PASS answered 230 (ok) or 530 (failed)."""

    listener: str
    address: str
    user: str  # upper-cased, in full
    ok: bool
    when: float


@dataclass(frozen=True, slots=True)
class RefusedRequest:
    """An FTP command refused by the command rules (550), e.g. RCMD or SITE."""

    listener: str
    address: str
    user: str | None
    command: str  # upper-case verb
    argument: str  # as sent (never a password: PASS is always allowed)
    when: float


@dataclass(frozen=True, slots=True)
class Ban:
    """An automatic ban: ``key`` is the banned address, or the IPv6 prefix (``2001:db8::/64``)."""

    key: str
    address: str  # the address whose failures caused it
    listener: str
    since: float
    until: float
    failures: int


class Sink(Protocol):
    def rejected(self, event: Rejection) -> None: ...

    def session(self, record: SessionRecord) -> None: ...

    def login(self, event: Login) -> None: ...

    def refused_request(self, event: RefusedRequest) -> None: ...

    def banned(self, ban: Ban) -> None: ...
