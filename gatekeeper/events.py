"""What the network side tells the recorder. Plain data, standard library only.

The network side calls a ``Sink``; the recorder is one. Calls never block and never fail:
the sink aggregates in memory and writes batches on its own schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Outcome(StrEnum):
    """How an accepted session ended."""

    CLOSED = "closed"  # either side closed normally
    IDLE = "idle-timeout"
    UPSTREAM_FAILED = "upstream-failed"  # could not connect to the upstream
    ERROR = "error"  # reset or socket error mid-session
    SHUTDOWN = "shutdown"  # cut at stop after the drain period
    ENFORCED = "enforced"  # cut at reload because its address is now denied
    PROXY = "proxy"  # an untrusted peer sent a PROXY header after being let in


@dataclass(frozen=True, slots=True)
class Rejection:
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


class Sink(Protocol):
    def rejected(self, event: Rejection) -> None: ...

    def session(self, record: SessionRecord) -> None: ...
