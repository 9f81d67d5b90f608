"""What a person reads: first rejections and flood summaries for the journal, and the
rejection and ban events forwarded to a SIEM as RFC 5424 syslog.

All of it is fed by the recorder's writer after each committed flush (``EventLog`` is its
``FlushObserver``), never by the accept path:

- a new address's first rejection (no ``rejections`` row before the flush) gets one line,
  at most ``FIRST_REJECTION_LINES`` per ``FIRST_REJECTION_WINDOW``, so a flood from many
  addresses cannot flood the journal;
- once per ``SUMMARY_INTERVAL``, if anything was rejected, one summary line: how many
  rejections from how many addresses, and the top ones. Quiet intervals print nothing;
- with ``syslog:`` configured, one REJECT message per (listener, address) per flush with
  the attempt count, and one BAN message per ban. A thread sends them from a bounded
  queue, so a SIEM that is slow or down costs the event loop nothing: what cannot be
  queued or sent is counted in ``SyslogForwarder.dropped``, the failure is logged once,
  and a TCP connection is retried with a growing delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from gatekeeper.events import Ban
from gatekeeper.settings import SyslogSettings
from gatekeeper.store.recorder import Flushed, RejectionCount

log = logging.getLogger(__name__)

# -- journal lines ---------------------------------------------------------------------------

SUMMARY_INTERVAL = 60.0  # seconds: the "per minute" of the flood summary
# For tests only: a shorter summary interval, in seconds (the daemon reads it at start).
SUMMARY_INTERVAL_ENV = "GATEKEEPER_SUMMARY_INTERVAL"
# First-rejection lines allowed per window: a person reads 20 lines a minute; a scan from
# thousands of addresses shows up in the summary's counts instead.
FIRST_REJECTION_LINES = 20
FIRST_REJECTION_WINDOW = 60.0  # seconds
TOP_ADDRESSES = 3  # addresses named in a summary line


class Summary:
    """Per-interval counts of flushed rejections and the first-rejection line budget.

    Pure bookkeeping with an injected clock (``time.monotonic`` by default): ``add()``
    what the recorder wrote, ``allow_first()`` before logging a first rejection,
    ``take()`` when the interval is over for the summary line (None when quiet)."""

    def __init__(
        self,
        interval: float = SUMMARY_INTERVAL,
        *,
        limit: int = FIRST_REJECTION_LINES,
        window: float = FIRST_REJECTION_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.limit = limit
        self.window = window
        self.clock = clock
        now = clock()
        self.started = now  # of the summary interval
        self.counts: dict[str, int] = {}
        self.total = 0
        self.unlisted = 0  # first rejections not logged (over the budget) this interval
        self._firsts_started = now
        self._firsts = 0

    @property
    def due(self) -> float:
        """Clock time at which the current interval ends."""
        return self.started + self.interval

    def add(self, address: str, count: int) -> None:
        self.counts[address] = self.counts.get(address, 0) + count
        self.total += count

    def allow_first(self) -> bool:
        """May one more first-rejection line be logged now? Counts those that may not."""
        now = self.clock()
        if now - self._firsts_started >= self.window:
            self._firsts_started = now
            self._firsts = 0
        if self._firsts < self.limit:
            self._firsts += 1
            return True
        self.unlisted += 1
        return False

    def take(self, *, force: bool = False) -> str | None:
        """The summary line if the interval is over (or ``force``) and anything was
        rejected; starts the next interval. None otherwise."""
        now = self.clock()
        if now < self.due and not force:
            return None
        elapsed = now - self.started
        self.started = now
        counts, total, unlisted = self.counts, self.total, self.unlisted
        self.counts, self.total, self.unlisted = {}, 0, 0
        if not total:
            return None
        if force:
            span = f"{max(elapsed, 0.0):.0f}s"
        else:
            span = "minute" if self.interval == 60.0 else f"{self.interval:g}s"
        top = heapq.nsmallest(TOP_ADDRESSES, counts.items(), key=lambda kv: (-kv[1], kv[0]))
        names = ", ".join(f"{address} ({n})" for address, n in top)
        plural = "address" if len(counts) == 1 else "addresses"
        line = f"rejections in the last {span}: {total} from {len(counts)} {plural}; top: {names}"
        if unlisted:
            line += f"; first rejections of {unlisted} more new addresses not listed"
        return line


def first_rejection_line(item: RejectionCount) -> str:
    what = "first would-be rejection (monitor mode)" if item.monitor else "first rejection"
    details = [f"reason {item.reason}"]
    if item.user is not None:
        details.append(f"user {_clean(item.user, 64)!r}")
    if item.rule is not None:
        details.append(item.rule)
    return f"{item.address}: {what} on {item.listener} ({', '.join(details)})"


# -- RFC 5424 --------------------------------------------------------------------------------

SD_ID = "gatekeeper@32473"  # 32473: the private enterprise number for examples (RFC 5612)
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
# RFC 5424 section 6.1: receivers SHOULD accept 2048 octets (and RFC 5426 says the same of
# UDP). With PARAM_BYTES per value, a message's structured data always fits; only the
# free-text MSG part is cut.
MAX_MESSAGE = 2048
PARAM_BYTES = 160  # a parameter value, escaped, in UTF-8 octets
MSG_CHARS = 200  # the free-text part


def _clean(text: str, limit: int) -> str:
    """No control characters (an attacker's user name must not break any framing)."""
    text = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _field(text: str, limit: int) -> str:
    """A header field (HOSTNAME, APP-NAME, PROCID, MSGID): PRINTUSASCII, or NILVALUE."""
    text = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return text or "-"


def escape_param(value: str, limit: int = PARAM_BYTES) -> str:
    """A PARAM-VALUE: ``"``, ``\\`` and ``]`` escaped (section 6.3.3), control characters
    replaced, cut at ``limit`` octets of UTF-8 without splitting an escape or a character."""
    out: list[str] = []
    size = 0
    for c in value:
        if not c.isprintable():
            c = "?"
        piece = "\\" + c if c in '"\\]' else c
        octets = len(piece.encode("utf-8", "replace"))
        if size + octets > limit:
            break
        out.append(piece)
        size += octets
    return "".join(out)


def timestamp(when: float) -> str:
    """TIMESTAMP: RFC 3339 in UTC with microseconds, e.g. 2024-05-01T07:00:00.000000Z."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_rfc5424(
    *,
    facility: int,
    severity: int,
    when: float,
    hostname: str,
    app_name: str,
    procid: str,
    msgid: str,
    params: Iterable[tuple[str, str]],
    msg: str = "",
) -> bytes:
    """One RFC 5424 SYSLOG-MSG with one SD-ELEMENT (``SD_ID``), at most ``MAX_MESSAGE``
    octets. ``msg`` is made printable ASCII (no BOM needed) and cut to fit."""
    header = (
        f"<{facility * 8 + severity}>1 {timestamp(when)} {_field(hostname, 255)} "
        f"{_field(app_name, 48)} {_field(procid, 128)} {_field(msgid, 32)} "
    )
    sd = "[" + SD_ID
    for name, value in params:
        sd += f' {name}="{escape_param(value)}"'
    sd += "]"
    head = (header + sd).encode("utf-8", "replace")
    text = _clean(msg, MSG_CHARS).encode("ascii", "replace")
    room = MAX_MESSAGE - len(head) - 1
    if not text or room <= 0:
        return head[:MAX_MESSAGE]
    return head + b" " + text[:room]


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 section 3.4.1 framing for TCP: MSG-LEN SP SYSLOG-MSG."""
    return b"%d %b" % (len(message), message)


class MessageMaker:
    """REJECT and BAN messages for one ``SyslogSettings``."""

    def __init__(self, settings: SyslogSettings) -> None:
        self.settings = settings
        self.hostname = settings.hostname or _field(socket.gethostname(), 255)
        self.procid = str(os.getpid())

    def _format(self, severity: int, when: float, msgid: str, params: list[tuple[str, str]],
                msg: str) -> bytes:  # fmt: skip
        s = self.settings
        return format_rfc5424(facility=s.facility, severity=severity, when=when,
                              hostname=self.hostname, app_name=s.app_name, procid=self.procid,
                              msgid=msgid, params=params, msg=msg)  # fmt: skip

    def reject(self, item: RejectionCount) -> bytes:
        params = [
            ("listener", item.listener),
            ("address", item.address),
            ("reason", item.reason),
            ("rule", item.rule or ""),
            ("attempts", str(item.count)),
            ("user", item.user or ""),
        ]
        if item.monitor:
            params.append(("mode", "monitor"))
        what = "would-be rejections" if item.monitor else "rejections"
        msg = f"{item.address}: {item.count} {what} on {item.listener} (reason {item.reason})"
        return self._format(SEVERITY_NOTICE, item.last, "REJECT", params, msg)

    def ban(self, ban: Ban) -> bytes:
        params = [
            ("listener", ban.listener),
            ("address", ban.address),
            ("reason", "ban"),
            ("key", ban.key),
            ("attempts", str(ban.failures)),
            ("until", timestamp(ban.until)),
        ]
        msg = f"{ban.address}: banned {ban.key} after {ban.failures} failed sign-ons"
        return self._format(SEVERITY_WARNING, ban.since, "BAN", params, msg)


# -- sending ---------------------------------------------------------------------------------

QUEUE_SIZE = 10_000  # messages waiting for the sender thread; more are dropped (counted)
CONNECT_TIMEOUT = 5.0  # seconds, TCP connect
SEND_TIMEOUT = 5.0  # seconds: a SIEM that stops reading for this long counts as down
RETRY_MIN = 1.0  # seconds before reconnecting after a failure, doubling up to RETRY_MAX
RETRY_MAX = 60.0
CLOSE_TIMEOUT = 2.0  # seconds given at stop to send what is queued


class SyslogForwarder:
    """Sends messages from a thread: ``submit()`` never blocks and never raises."""

    def __init__(self, settings: SyslogSettings, *, queue_size: int = QUEUE_SIZE) -> None:
        self.settings = settings
        self.sent = 0
        self._overflow = 0  # counted by submit() (the event loop's thread)
        self._failed = 0  # counted by the sender thread
        self._queue: queue.Queue[bytes | None] = queue.Queue(queue_size)
        self._sock: socket.socket | None = None
        self._down = False
        self._full = False
        self._retry_at = 0.0
        self._backoff = RETRY_MIN
        self._thread = threading.Thread(target=self._run, name="gatekeeper-syslog", daemon=True)

    @property
    def dropped(self) -> int:
        """Messages never sent (queue full, SIEM unreachable)."""
        return self._overflow + self._failed

    def start(self) -> None:
        self._thread.start()

    def submit(self, message: bytes) -> None:
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self._overflow += 1
            if not self._full:
                self._full = True
                log.error("syslog: %s is not keeping up; dropping messages", self.settings.target)
        else:
            self._full = False

    def stop(self) -> None:
        """Ask the thread to end after what is queued (does not wait)."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=CLOSE_TIMEOUT)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Send what is queued (up to ``timeout``), then stop. Blocks: call from a thread."""
        self.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self.dropped:
            log.warning("syslog: %d messages could not be sent to %s",
                        self.dropped, self.settings.target)  # fmt: skip

    def _run(self) -> None:
        try:
            while (message := self._queue.get()) is not None:
                self._send(message)
        finally:
            self._disconnect()

    def _connect(self) -> socket.socket:
        s = self.settings
        if s.transport == "tcp":
            sock = socket.create_connection((s.host, s.port), timeout=CONNECT_TIMEOUT)
            sock.settimeout(SEND_TIMEOUT)
            return sock
        family, kind, proto, _, address = socket.getaddrinfo(
            s.host, s.port, type=socket.SOCK_DGRAM
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _send(self, message: bytes) -> None:
        if self._sock is None:
            if time.monotonic() < self._retry_at:
                self._failed += 1
                return
            try:
                self._sock = self._connect()
            except OSError as exc:
                self._fail(exc)
                return
        try:
            if self.settings.transport == "tcp":
                self._sock.sendall(octet_counted(message))
            else:
                self._sock.send(message)
        except OSError as exc:
            self._disconnect()
            self._fail(exc)
            return
        self.sent += 1
        self._backoff = RETRY_MIN
        if self._down:
            self._down = False
            log.warning("syslog: sending to %s again (%d messages dropped so far)",
                        self.settings.target, self.dropped)  # fmt: skip

    def _fail(self, exc: OSError) -> None:
        self._failed += 1
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RETRY_MAX)
        if not self._down:
            self._down = True
            log.error("syslog: cannot send to %s: %s; dropping messages, retrying",
                      self.settings.target, exc.strerror or exc)  # fmt: skip


# -- the recorder's observer -------------------------------------------------------------------


def _interval_from_env() -> float:
    text = os.environ.get(SUMMARY_INTERVAL_ENV)
    if not text:
        return SUMMARY_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value > 0:
        return value
    log.warning("%s=%r is not a positive number of seconds; using %gs",
                SUMMARY_INTERVAL_ENV, text, SUMMARY_INTERVAL)  # fmt: skip
    return SUMMARY_INTERVAL


class EventLog:
    """The recorder's ``FlushObserver``: journal lines, summaries and syslog forwarding."""

    def __init__(
        self,
        syslog: SyslogSettings | None = None,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.summary = Summary(interval or _interval_from_env(), clock=clock)
        self.syslog: SyslogSettings | None = None
        self.forwarder: SyslogForwarder | None = None
        self.maker: MessageMaker | None = None
        self._task: asyncio.Task[None] | None = None
        self.configure(syslog)

    def configure(self, syslog: SyslogSettings | None) -> None:
        """Start, change or stop forwarding (at start and at reload)."""
        if syslog == self.syslog:
            return
        if self.forwarder is not None:
            self.forwarder.stop()  # its thread sends what it holds, then ends
            log.info("syslog: no longer forwarding to %s", self.forwarder.settings.target)
        self.syslog = syslog
        self.forwarder = self.maker = None
        if syslog is not None:
            self.maker = MessageMaker(syslog)
            self.forwarder = SyslogForwarder(syslog)
            self.forwarder.start()
            log.info("syslog: forwarding rejections and bans to %s", syslog.target)

    def start(self) -> None:
        """Start the summary task (inside the event loop)."""
        self.summary.started = self.summary.clock()
        self._task = asyncio.get_running_loop().create_task(
            self._summarise(), name="gatekeeper-summary"
        )

    async def _summarise(self) -> None:
        summary = self.summary
        while True:
            await asyncio.sleep(max(summary.due - summary.clock(), 0.0))
            line = summary.take()
            if line is not None:
                log.info("%s", line)

    async def close(self) -> None:
        """After the recorder's last flush: the last summary, then what syslog holds."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        line = self.summary.take(force=True)
        if line is not None:
            log.info("%s", line)
        if self.forwarder is not None:
            await asyncio.to_thread(self.forwarder.close)

    def flushed(self, written: Flushed) -> None:
        summary = self.summary
        firsts: dict[str, RejectionCount] = {}
        for item in written.rejections:
            summary.add(item.address, item.count)
            if item.address in written.new_addresses:
                held = firsts.get(item.address)
                if held is None or item.first < held.first:
                    firsts[item.address] = item
        for item in sorted(firsts.values(), key=lambda x: (x.first, x.address)):
            if summary.allow_first():
                log.info("%s", first_rejection_line(item))
        forwarder, maker = self.forwarder, self.maker
        if forwarder is None or maker is None:
            return
        for item in written.rejections:
            forwarder.submit(maker.reject(item))
        for ban in written.bans:
            forwarder.submit(maker.ban(ban))
