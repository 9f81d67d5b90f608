"""The FTP control-channel inspector: users, sign-on failures, command rules, data channels.

It sits inside an accepted session's relay: client bytes become commands (codec), each is
allowed, refused with a reply of our own, or rewritten (PORT/EPRT) before it goes upstream;
upstream bytes become replies, and PASV/EPSV replies are rewritten so data connections run
through gatekeeper. Replies stay in order: commands are answered first-in first-out, and a
reply gatekeeper makes itself waits behind the upstream replies still owed.

Toward the upstream gatekeeper speaks the upstream's address family: PASV/PORT to an IPv4
upstream, EPSV/EPRT to an IPv6 one, whatever the client used.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gatekeeper.errors import ProtocolError
from gatekeeper.events import Login, Outcome, RefusedRequest, Rejection
from gatekeeper.ftp.codec import (
    NEED_DATA,
    Command,
    CommandReader,
    LineTooLong,
    Reply,
    ReplyReader,
    UnknownFamily,
    format_227,
    format_229,
    format_command,
    format_eprt,
    format_port,
    format_reply,
    parse_227,
    parse_229,
    parse_eprt,
    parse_port,
)
from gatekeeper.ftp.data import DataChannel, listen_on
from gatekeeper.net.relay import REPLY_421, Relay, timeout_reply
from gatekeeper.rules.model import FtpPolicy, Reason
from gatekeeper.settings import normalise_host

log = logging.getLogger(__name__)

# Always allowed, whatever a user's command list says (PRODUCT.md): session housekeeping.
HOUSEKEEPING = frozenset(
    [
        "USER",
        "PASS",
        "ACCT",
        "QUIT",
        "REIN",
        "NOOP",
        "SYST",
        "FEAT",
        "OPTS",
        "HELP",
        "STAT",
        "TYPE",
        "MODE",
        "STRU",
        "PASV",
        "EPSV",
        "PORT",
        "EPRT",
        "ABOR",
        "AUTH",
        "PBSZ",
        "PROT",
        "CCC",
        "REST",
    ]
)
DOWNLOADS = frozenset({"RETR"})
UPLOADS = frozenset({"STOR", "STOU", "APPE"})
# Commands a client may have outstanding; past this it is flooding, not pipelining.
MAX_OUTSTANDING = 64
# Over-long or garbage lines a session may send before it is closed (like aiosmtpd's budget).
MAX_BAD_LINES = 10

R425 = format_reply(425, "Can't open data connection.")
R500_LONG = format_reply(500, "Command line too long.")
R501 = format_reply(501, "Syntax error in parameters or arguments.")
R504_BOUNCE = format_reply(504, "Command not implemented for that parameter.")
R522 = format_reply(522, "Network protocol not supported, use (1,2).")  # RFC 2428
R530 = format_reply(530, "Not logged in.")
R534 = format_reply(534, "Request denied for policy reasons.")
R550 = format_reply(550, "Requested action not taken: not permitted.")


def glob_match(pattern: str, name: str) -> bool:
    """Does ``name`` match ``pattern``, where ``*`` stands for any run of characters?

    Linear: the parts between stars are found left to right, each at its first place
    (with ``*`` the only wildcard, the leftmost place never loses a match). A regex built
    from several stars backtracks polynomially over a 4,096-byte name on the event loop.
    """
    first, *middle = pattern.split("*")
    if not middle:
        return name == pattern
    *middle, last = middle
    if len(first) + len(last) > len(name) or not (name.startswith(first) and name.endswith(last)):
        return False
    at, end = len(first), len(name) - len(last)
    for part in middle:
        at = name.find(part, at, end)
        if at < 0:
            return False
        at += len(part)
    return True


def denied_user(policy: FtpPolicy, user: str) -> bool:
    """Is ``user`` in the policy's ``deny_users`` (case-insensitive, ``*`` wildcards)?
    The patterns are upper-case already (the loader makes them so)."""
    if not policy.deny_users:
        return False
    name = user.upper()
    return any(glob_match(pattern, name) for pattern in policy.deny_users)


@dataclass(slots=True)
class _Owed:
    """A command waiting for its final reply; ``local`` is a reply we give ourselves."""

    verb: str
    local: bytes | None = None
    user: str | None = None  # PASS: the user signing on
    sent: str = ""  # the verb actually sent upstream (PASV for a client's EPSV...)
    target: tuple[str, int] | None = None  # PORT/EPRT: where the client listens


class FtpSession:
    """Inspects one FTP control connection; created by the relay of an FTP listener."""

    def __init__(self, relay: Relay, client_tls: ssl.SSLContext | None = None) -> None:
        self.relay = relay
        self.listener = relay.listener
        self.address = relay.address
        self.connect_timeout = relay.listener.settings.timeouts.connect
        self.commands = CommandReader()
        self.replies = ReplyReader()
        self.owed: deque[_Owed] = deque([_Owed("<greeting>")])
        self.user: str | None = None  # the name given at USER (upper-case)
        self.said_goodbye = False  # the upstream answered QUIT with 221
        self.logged_in = False
        self.failed_logins = 0
        self.files_sent = 0
        self.files_received = 0
        self.data: DataChannel | None = None
        self.bad_lines = 0
        self.client_tls = client_tls  # set when the client-side control channel is TLS
        self.protect_data = False  # PROT P given by the client
        self.upstream_tls: ssl.SSLContext | None = None
        self.outcome: str | None = None
        ruleset = self.listener.gate.ruleset
        self.policy: FtpPolicy = ruleset.spec.ftp
        self.privileged = ruleset.is_privileged(self.address)
        # timeouts.login: from accept to the upstream's 230 (ProFTPD's TimeoutLogin). A
        # client trickling a byte now and then keeps the idle timeout from firing; this one
        # it cannot put off.
        login = self.listener.settings.timeouts.login
        self.login_timer: asyncio.TimerHandle | None = relay.loop.call_later(
            login, self._login_expired, login
        )

    # -- bytes in -----------------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        self.commands.receive_data(data)
        while not self.relay.closed:
            event = self.commands.next_event()
            if event is NEED_DATA:
                return
            if isinstance(event, LineTooLong):
                self._bad_line(R500_LONG)
                continue
            assert isinstance(event, Command)
            self._command(event)

    def from_upstream(self, data: bytes) -> None:
        self.replies.receive_data(data)
        while not self.relay.closed:
            try:
                event = self.replies.next_event()
            except ProtocolError as exc:
                log.warning(
                    "%s: upstream of %s sent a malformed reply: %s",
                    self.address,
                    self.listener.name,
                    exc,
                )
                self.relay.send_client(REPLY_421)
                self.relay.close(Outcome.ERROR)
                return
            if event is NEED_DATA:
                return
            assert isinstance(event, Reply)
            self._reply(event)

    # -- commands -----------------------------------------------------------------------
    def _command(self, cmd: Command) -> None:
        if len(self.owed) >= MAX_OUTSTANDING:
            log.warning(
                "%s: %d commands outstanding on %s, closing",
                self.address,
                len(self.owed),
                self.listener.name,
            )
            self.relay.send_client(REPLY_421)
            self.relay.close()
            return
        verb = cmd.verb
        if not verb or not verb.isascii() or not verb.isalpha():
            self._bad_line(format_reply(500, "Syntax error, command unrecognized."))
            return
        if cmd.hides_line_end or "\r" in cmd.argument or "\0" in cmd.argument:
            # A line end hidden in Telnet bytes or a bare CR could smuggle a second command
            # past the checks to a server that splits lines differently: never forward it.
            self._bad_line(format_reply(501, "Syntax error in parameters or arguments."))
            return
        handler = _HANDLERS.get(verb)
        if handler is not None:
            handler(self, cmd)
            return
        if not self._permitted(verb):
            self._refuse(cmd)
            return
        self._forward(cmd, _Owed(verb, sent=verb))

    def _permitted(self, verb: str) -> bool:
        if verb in HOUSEKEEPING or self.privileged or self.user is None:
            return True
        rule = self.policy.users.get(self.user)
        return rule is None or verb in rule.commands

    def _refuse(self, cmd: Command) -> None:
        now = time.time()
        log.info(
            "%s: %s refused for user %s on %s",
            self.address,
            cmd.verb,
            self.user,
            self.listener.name,
        )
        self.listener.sink.refused_request(
            RefusedRequest(self.listener.name, self.address, self.user, cmd.verb, cmd.argument, now)
        )
        self._local(R550)

    def _forward(self, cmd: Command, owed: _Owed, raw: bytes | None = None) -> None:
        self.owed.append(owed)
        self.relay.send_upstream(cmd.raw if raw is None else raw)

    def _local(self, reply: bytes) -> None:
        """Answer ourselves, after any reply still owed by the upstream."""
        if self.owed:
            self.owed.append(_Owed("<local>", local=reply))
        else:
            self.relay.send_client(reply)

    def _bad_line(self, reply: bytes) -> None:
        self.bad_lines += 1
        self._local(reply)
        if self.bad_lines >= MAX_BAD_LINES:
            log.warning(
                "%s: %d bad command lines on %s, closing",
                self.address,
                self.bad_lines,
                self.listener.name,
            )
            self._local(REPLY_421)
            self._close_after_replies()

    def _close_after_replies(self) -> None:
        if self.owed:
            self.owed.append(_Owed("<close>"))
        else:
            self.relay.close()

    def _user(self, cmd: Command) -> None:
        user = cmd.argument.strip().upper()
        self.user = user
        self.logged_in = False
        if not self.privileged and denied_user(self.policy, user):
            now = time.time()
            listener = self.listener
            log.warning("%s: user %r denied on %s", self.address, user, listener.name)
            listener.sink.rejected(
                Rejection(listener.name, self.address, Reason.USER.value, None, now, user=user)
            )
            self.outcome = "denied-user"
            self._count_failure(now)
            self._local(R530)
            self._close_after_replies()
            return
        self._forward(cmd, _Owed("USER", user=user, sent="USER"))

    def _pass(self, cmd: Command) -> None:
        self._forward(cmd, _Owed("PASS", user=self.user, sent="PASS"))

    def _auth(self, cmd: Command) -> None:
        """AUTH TLS/SSL: refused (534), or TLS ends here (tls: terminate)."""
        context = self.listener.client_tls
        if context is None:
            self._local(R534)
            return
        if self.client_tls is not None or self.owed:
            self._local(format_reply(503, "Bad sequence of commands."))
            return
        if cmd.argument.strip().upper() not in ("TLS", "SSL", "TLS-C"):
            self._local(format_reply(504, "AUTH mechanism not supported; use AUTH TLS."))
            return
        # The client's TLS hello follows our 234 at once: stop reading until start_tls owns
        # the connection, or the hello could reach the FTP parser instead.
        self.relay.client.pause_reading()
        self.relay.send_client(format_reply(234, "AUTH TLS successful."))

        def client_ready() -> None:
            self.client_tls = context

        self.relay.start_client_tls(context, client_ready)
        upstream = self.listener.upstream_tls
        if upstream is not None:
            self.upstream_tls = upstream
            self.owed.append(_Owed("<auth-upstream>"))
            self.relay.send_upstream(format_command("AUTH", "TLS"))
            self.relay.upstream_hold = []  # nothing more goes upstream in plain

    def _port(self, cmd: Command) -> None:
        try:
            host, port = (
                parse_port(cmd.argument) if cmd.verb == "PORT" else parse_eprt(cmd.argument)
            )
        except UnknownFamily:
            self._local(R522)
            return
        except ValueError:
            self._local(R501)
            return
        if normalise_host(host) != self.relay.address or port < 1024:
            # RFC 2577: a PORT to another host, or to a privileged port, is an FTP bounce.
            log.warning("%s: %s to %s:%d refused (bounce)", self.address, cmd.verb, host, port)
            self._local(R504_BOUNCE)
            return
        local = self.relay.upstream_local
        if local is None:
            self._local(R425)
            return
        sock = listen_on(local)
        upstream = self.relay.upstream_host
        channel = self._open_channel(
            sock, expect=(upstream, upstream), target=(host, port), client_side=False,
            release=_no_pool,
        )  # fmt: skip
        if ":" in local:
            raw = format_command("EPRT", format_eprt(local, channel.port))
            sent = "EPRT"
        else:
            raw = format_command("PORT", format_port(local, channel.port))
            sent = "PORT"
        self._forward(cmd, _Owed(cmd.verb, sent=sent, target=(host, port)), raw)

    def _pasv(self, cmd: Command) -> None:
        if cmd.verb == "EPSV" and cmd.argument.strip().upper() == "ALL":
            self._forward(cmd, _Owed("EPSV ALL", sent="EPSV"))
            return
        upstream_v6 = ":" in self.relay.upstream_host
        sent = "EPSV" if upstream_v6 else "PASV"
        self._forward(cmd, _Owed(cmd.verb, sent=sent), format_command(sent))

    def _prot(self, cmd: Command) -> None:
        """PBSZ/PROT/CCC: with TLS ending at gatekeeper, the client's data protection is ours
        to honour; a TLS upstream is asked for the same protection on its side."""
        level = cmd.argument.strip().upper()
        if self.client_tls is None:
            self._forward(cmd, _Owed(cmd.verb, sent=cmd.verb))
            return
        if cmd.verb == "CCC":
            self._local(format_reply(534, "CCC not allowed: the control channel stays protected."))
            return
        if cmd.verb == "PROT" and level not in ("P", "C"):
            self._local(format_reply(536, "Protection level not supported."))
            return
        if cmd.verb == "PROT":
            self.protect_data = level == "P"
        if self.upstream_tls is not None:
            self._forward(cmd, _Owed(cmd.verb, sent=cmd.verb))
        elif cmd.verb == "PBSZ":
            self._local(format_reply(200, "PBSZ=0"))
        else:
            self._local(format_reply(200, f"Protection level set to {level}."))

    # -- replies ------------------------------------------------------------------------
    def _reply(self, reply: Reply) -> None:
        if reply.preliminary or not self.owed:
            self.relay.send_client(reply.raw)  # 1xx, or unsolicited (e.g. 421 on timeout)
            return
        owed = self.owed.popleft()
        verb = owed.verb
        out = reply.raw
        if verb == "<auth-upstream>":
            self._upstream_auth(reply)
            return
        if verb in ("PASV", "EPSV") and reply.code in (227, 229):
            out = self._passive_reply(verb, reply)
        elif verb in DOWNLOADS and reply.code in (226, 250):
            self.files_sent += 1
        elif verb in UPLOADS and reply.code in (226, 250):
            self.files_received += 1
        elif verb in ("PORT", "EPRT") and reply.code >= 400 and self.data is not None:
            self.data.close()
        elif verb == "QUIT" and reply.code == 221:
            self.said_goodbye = True
        self.relay.send_client(out)
        if verb == "PASS":
            self._signed_on(owed, reply)  # after the reply: a ban's 421 comes behind the 530
        self._flush_local()

    def _upstream_auth(self, reply: Reply) -> None:
        """The upstream's answer to our own AUTH TLS: start TLS toward it, or give up."""
        context = self.upstream_tls
        if reply.code != 234 or context is None:
            log.warning(
                "%s: upstream refused AUTH TLS: %d %s", self.address, reply.code, reply.text
            )
            self.relay.upstream_hold = None
            self.relay.send_client(REPLY_421)
            self.relay.close(Outcome.ERROR)
            return
        self.relay.start_upstream_tls(context, self._flush_local)

    def _flush_local(self) -> None:
        while self.owed and self.owed[0].verb in ("<local>", "<close>"):
            owed = self.owed.popleft()
            if owed.local is not None:
                self.relay.send_client(owed.local)
            else:
                self.relay.close()
                return

    def _signed_on(self, owed: _Owed, reply: Reply) -> None:
        user = owed.user or ""
        now = time.time()
        if reply.code == 230:
            self.logged_in = True
            self._stop_login_timer()
            self.outcome = "logged-in"
            self.listener.sink.login(Login(self.listener.name, self.address, user, True, now))
        elif reply.code == 530:
            self.failed_logins += 1
            if self.outcome is None:
                self.outcome = "login-failed"
            log.info("%s: sign-on failed for %r on %s", self.address, user, self.listener.name)
            self.listener.sink.login(Login(self.listener.name, self.address, user, False, now))
            if self._count_failure(now):
                self._local(REPLY_421)
                self._close_after_replies()

    def _count_failure(self, now: float) -> bool:
        """Count a failed sign-on toward a ban; True if the address is now banned."""
        policy = self.policy.ban
        if policy is None or self.privileged:
            return False
        listener = self.listener
        ban = listener.gate.bans.failure(listener.name, self.address, now, policy)
        if ban is None:
            return False
        log.warning(
            "%s: banned %s for %.0fs after %d failed sign-ons on %s",
            self.address, ban.key, policy.duration, ban.failures, listener.name,
        )  # fmt: skip
        self.outcome = "banned"
        listener.sink.banned(ban)
        return True

    def _passive_reply(self, verb: str, reply: Reply) -> bytes:
        """Open our own data port toward the client and announce it instead of the upstream's."""
        try:
            port = parse_227(reply.text)[1] if reply.code == 227 else parse_229(reply.text)
        except ValueError:
            log.warning(
                "%s: unparsable %d reply from upstream: %r", self.address, reply.code, reply.text
            )
            return R425
        relay = self.relay
        if self.data is not None:
            self.data.close()  # a new PASV replaces the one before: its port goes back first
        sock = self.listener.ports.open(relay.client_local)
        if sock is None:
            log.warning("%s: passive port range of %s exhausted", self.address, self.listener.name)
            return R425
        settings = self.listener.settings
        expect = None if settings.allow_foreign_data else (relay.data_address, relay.address)
        channel = self._open_channel(
            sock, expect=expect, target=(relay.upstream_host, port), client_side=True,
            release=self.listener.ports.release,
        )  # fmt: skip
        if verb == "EPSV":
            return format_229(channel.port)
        announce = settings.passive_address or relay.client_local
        if ":" in announce:  # PASV can only announce IPv4
            return format_reply(425, "Use EPSV with IPv6.")
        return format_227(announce, channel.port)

    # -- data channels ------------------------------------------------------------------
    def _open_channel(
        self,
        sock: socket.socket,
        *,
        expect: tuple[str, str] | None,
        target: tuple[str, int],
        client_side: bool,
        release: Callable[[int], None],
    ) -> DataChannel:
        if self.data is not None:
            self.data.close()  # a new PASV/PORT replaces the one before
        channel = DataChannel(
            self, sock, expect=expect, target=target, client_side=client_side, release=release,
            client_tls=self.client_tls if self.protect_data else None,
            upstream_tls=self.upstream_tls if self.protect_data else None,
            upstream_hostname=self.listener.settings.upstream.host,
        )  # fmt: skip
        self.data = channel
        return channel

    def proxy_trusted(self, peer: str) -> bool:
        listener = self.listener
        return bool(listener.proxy_senders) and listener.is_proxy_sender(peer)

    def data_done(self, channel: DataChannel, bytes_up: int, bytes_down: int) -> None:
        self.relay.bytes_up += bytes_up
        self.relay.bytes_down += bytes_down
        if channel is self.data:
            self.data = None

    def data_active(self) -> float | None:
        """Loop time of the last byte on the data connection; None when none is relaying."""
        return self.data.last_active if self.data is not None else None

    def _login_expired(self, seconds: float) -> None:
        self.login_timer = None
        if self.logged_in or self.relay.closed:
            return
        log.info(
            "%s: not signed on within %gs on %s, closing", self.address, seconds,
            self.listener.name,
        )  # fmt: skip
        self.relay.expire(Outcome.LOGIN_TIMEOUT, timeout_reply("Login", seconds))

    def _stop_login_timer(self) -> None:
        if self.login_timer is not None:
            self.login_timer.cancel()
            self.login_timer = None

    def close(self) -> None:
        """The session is over: stop any data channel and the login timer."""
        self._stop_login_timer()
        if self.data is not None:
            self.data.close()


def _no_pool(port: int) -> None:
    """Active-mode ports come from the kernel, not a pool: nothing to give back."""


_HANDLERS = {
    "USER": FtpSession._user,
    "PASS": FtpSession._pass,
    "AUTH": FtpSession._auth,
    "PORT": FtpSession._port,
    "EPRT": FtpSession._port,
    "PASV": FtpSession._pasv,
    "EPSV": FtpSession._pasv,
    "PBSZ": FtpSession._prot,
    "PROT": FtpSession._prot,
    "CCC": FtpSession._prot,
}
