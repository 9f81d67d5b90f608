"""Bytes both ways between two connected sockets, in the kernel when a stream is bulk.

A ``Pump`` moves bytes between two connected, non-blocking stream sockets with the event
loop's ``add_reader``/``add_writer`` callbacks: no transports, no protocols, no task. Each
direction (a→b and b→a, a ``_Way`` below) is driven on its own and is in one of three
states: *reading* (a reader on its source), *writing* (bytes are pending: the reader is off
and a writer waits on the destination) or *done* (EOF passed on as ``shutdown(SHUT_WR)``).

Copy mode, where every direction starts: a readable source is read with ``recv_into`` into
a per-thread scratch buffer of ``BUFFER_SIZE`` and sent to the destination straight from
it. Only what the destination would not take is kept (at most one buffer's worth), so an
idle session holds no buffer at all.

Splice mode (HAProxy's ``splice-auto`` idea): when one read fills the whole scratch buffer
the direction is bulk, and it switches for good to ``os.splice``: source socket → pipe →
destination socket, the bytes never entering Python. The pipe is grown to ``PIPE_SIZE``
(``F_SETPIPE_SZ``; a smaller limit is taken as it comes). Without ``os.splice``, when a pipe
cannot be made or stays smaller than a buffer (the per-user pipe budget,
``/proc/sys/fs/pipe-user-pages-soft``, is spent), or when splice refuses the sockets, the
direction stays in copy mode. Bytes kept from copy mode go out before any from the pipe.

Flow control: a direction reads only when nothing is pending, so what it holds is bounded
by one buffer (copy) or one pipe (splice); a peer that never reads stalls its writer.

Ending: EOF from a source is passed on as ``shutdown(SHUT_WR)`` once everything pending is
written, and the other direction goes on (half-close, as TCP). When both directions are
done the sockets are closed. An error on either side (a reset, a broken pipe, anything
unexpected) ends the pump at once: both sockets are closed with ``SO_LINGER`` 0 (RST), as
what is pending is moot; ``broken_end`` then says which end was reset, so the owner can
tell a client's reset from the upstream's. ``close()`` stops reading and ends once the
pending bytes are written; ``abort()`` is the immediate, resetting end. In every case the
owner's ``on_done`` is called exactly once, after both sockets and the pipes are closed;
it may be called from within ``close()`` or ``abort()``, and never from ``start()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Final

__all__ = ["BUFFER_SIZE", "PIPE_SIZE", "Pump"]

# One read in copy mode; a read that fills it marks the direction as bulk.
BUFFER_SIZE: Final = 64 * 1024
# The pipe of a direction in splice mode (asked for; /proc/sys/fs/pipe-max-size may cap it).
PIPE_SIZE: Final = 1024 * 1024

_splice: Final[Callable[..., int] | None] = getattr(os, "splice", None)  # Linux only
_SPLICE_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ: Final = 1031  # fcntl.F_SETPIPE_SZ (Linux)
_F_GETPIPE_SZ: Final = 1032  # fcntl.F_GETPIPE_SZ (Linux)
# splice(2) on a file it cannot handle: stay in copy mode instead.
_NO_SPLICE: Final = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
_WOULD_BLOCK: Final = (BlockingIOError, InterruptedError)
_EMPTY: Final = memoryview(b"")

_NEW, _RUNNING, _CLOSING, _CLOSED = range(4)

_scratch_of_thread = threading.local()


def _scratch() -> memoryview:
    """This thread's read buffer (the GIL is let go during recv: one buffer per thread)."""
    try:
        buf: memoryview = _scratch_of_thread.buf
    except AttributeError:
        buf = _scratch_of_thread.buf = memoryview(bytearray(BUFFER_SIZE))
    return buf


def _open_pipe() -> tuple[int, int, int] | None:
    """A non-blocking pipe of at least ``BUFFER_SIZE``: (read fd, write fd, size), or None."""
    import fcntl  # Linux-only, as splice

    try:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # out of file descriptors: copying still works
        return None
    try:
        size = fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # above pipe-max-size or the user's pipe budget: keep what we have
        try:
            size = fcntl.fcntl(w, _F_GETPIPE_SZ)
        except OSError:
            size = 0
    if size < BUFFER_SIZE:
        os.close(r)
        os.close(w)
        return None
    return r, w, size


def _raise_pending_error(sock: socket.socket) -> None:
    """Raise the error a socket holds (a reset), if any, after a read that got bytes.

    uvloop (libuv's poll handles) calls a reader once when its socket reports an error and
    then drops the registration for good. When a reset arrives behind bytes still queued,
    that one call reads the bytes, not the error, and no further call would ever come: the
    direction would wait for ever. One ``getsockopt`` per read that goes on reading finds
    the reset at once (with the standard loop, which keeps calling, it is found as early).
    """
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))


def _broken(sock: socket.socket) -> bool:
    """Has this connection been reset? A reset puts the socket in the CLOSE state, where
    ``getpeername()`` fails (ENOTCONN), while a healthy or half-closed one still answers."""
    try:
        sock.getpeername()
    except OSError:
        return True
    return False


class _Way:
    """One direction of a pump: bytes read from ``src`` and written to ``dst``."""

    __slots__ = (
        "can_splice", "done", "dst", "dst_fd", "eof", "held", "in_pipe", "moved", "pipe_r",
        "pipe_size", "pipe_w", "reading", "src", "src_fd", "writing",
    )  # fmt: skip

    def __init__(self, src: socket.socket, dst: socket.socket, early: bytes) -> None:
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.held = memoryview(early) if early else _EMPTY  # read or given, not yet sent
        self.in_pipe = 0  # spliced into the pipe, not yet out of it
        self.pipe_r = self.pipe_w = -1
        self.pipe_size = 0  # > 0 once the direction went to splice mode
        self.can_splice = _splice is not None
        self.moved = 0  # bytes written to dst
        self.reading = False  # a reader is on src
        self.writing = False  # a writer is on dst
        self.eof = False  # src said EOF
        self.done = False  # EOF passed on to dst (or the pump ended)

    @property
    def pending(self) -> int:
        return len(self.held) + self.in_pipe


class Pump:
    """Bytes both ways between two connected, non-blocking sockets, driven by the event
    loop's add_reader/add_writer (no transports).

    ``early_a`` is sent to ``b`` before anything read from ``a``. Once started, the pump
    owns both sockets and closes them; ``on_done(pump, exc)`` follows exactly once, with
    the error that ended it (None for an orderly end, ``close()`` or ``abort()``).
    """

    __slots__ = (
        "_a", "_ab", "_b", "_ba", "_loop", "_on_done", "_state", "broken_end", "last_active",
    )  # fmt: skip

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        a: socket.socket,
        b: socket.socket,
        on_done: Callable[[Pump, Exception | None], None],
        *,
        early_a: bytes = b"",
    ) -> None:
        self._loop = loop
        self._a = a
        self._b = b
        self._ab = _Way(a, b, early_a)
        self._ba = _Way(b, a, b"")
        self._on_done: Callable[[Pump, Exception | None], None] | None = on_done
        self._state = _NEW
        self.last_active = loop.time()  # of the last byte moved either way
        # When an error ended the pump: "a" or "b", the end whose connection broke (reset
        # by its peer), None if neither looks broken (or no error).
        self.broken_end: str | None = None

    # -- what the owner sees --------------------------------------------------------------
    @property
    def bytes_ab(self) -> int:
        """Bytes written to b: read from a (and ``early_a``)."""
        return self._ab.moved

    @property
    def bytes_ba(self) -> int:
        """Bytes written to a, read from b."""
        return self._ba.moved

    @property
    def pending(self) -> tuple[int, int]:
        """Bytes read but not yet written, a→b and b→a (the pump's buffer use)."""
        return self._ab.pending, self._ba.pending

    @property
    def spliced(self) -> tuple[bool, bool]:
        """Whether a→b and b→a are in splice mode (each made a pipe; splice not refused)."""
        return self._ab.pipe_size > 0, self._ba.pipe_size > 0

    @property
    def closed(self) -> bool:
        """Both sockets are closed (``on_done`` has been called)."""
        return self._state == _CLOSED

    # -- the owner's controls ---------------------------------------------------------------
    def start(self) -> None:
        """Begin moving bytes; ``early_a`` goes to b first."""
        if self._state != _NEW:
            raise RuntimeError("pump already started or ended")
        self._state = _RUNNING
        self.last_active = self._loop.time()
        for way in (self._ab, self._ba):
            way.src.setblocking(False)
            if way.held:
                self._want_write(way)
            else:
                self._want_read(way)

    def close(self) -> None:
        """Stop reading, write what is pending, then close both sockets.

        A peer that never reads keeps the pump open: ``abort()`` it after a while."""
        if self._state == _NEW:
            self._finish(None, reset=False)
            return
        if self._state != _RUNNING:
            return
        self._state = _CLOSING
        for way in (self._ab, self._ba):
            if way.done or self._state == _CLOSED:
                continue
            self._stop_read(way)
            if not way.pending:
                self._shut(way)
            # else its writer is on; ``_writable`` shuts it once drained

    def abort(self) -> None:
        """End now: both sockets closed with a reset, pending bytes dropped."""
        if self._state != _CLOSED:
            self._finish(None, reset=True)

    # -- event-loop callbacks (never raise) -------------------------------------------------
    def _readable(self, way: _Way) -> None:
        if self._state == _CLOSED:  # a callback already queued when the pump ended
            return
        try:
            if way.pipe_w >= 0:
                self._splice_in(way)
            else:
                self._copy_in(way)
        except Exception as exc:  # a reset, a broken pipe... or a bug: end, never raise
            self._fail(exc)

    def _writable(self, way: _Way) -> None:
        if self._state == _CLOSED:
            return
        moved = way.moved
        try:
            drained = self._flush(way)
        except Exception as exc:
            self._fail(exc)
            return
        if way.moved != moved:
            self.last_active = self._loop.time()
        if not drained:
            return
        self._stop_write(way)
        if way.eof or self._state == _CLOSING:
            self._shut(way)
        else:
            self._want_read(way)

    # -- moving bytes -----------------------------------------------------------------------
    def _copy_in(self, way: _Way) -> None:
        buf = _scratch()
        try:
            n = way.src.recv_into(buf)
        except _WOULD_BLOCK:
            return
        if n == 0:
            self._eof(way)
            return
        self.last_active = self._loop.time()
        try:
            sent = way.dst.send(buf[:n])
        except _WOULD_BLOCK:
            sent = 0
        way.moved += sent
        if sent < n:
            way.held = memoryview(bytes(buf[sent:n]))
            self._stop_read(way)
            self._want_write(way)
        if n == len(buf) and way.can_splice:  # bulk: splice from the next read on
            self._to_splice(way)
        if way.reading:
            _raise_pending_error(way.src)

    def _to_splice(self, way: _Way) -> None:
        pipe = _open_pipe()
        if pipe is None:
            way.can_splice = False
            return
        way.pipe_r, way.pipe_w, way.pipe_size = pipe

    def _splice_in(self, way: _Way) -> None:
        assert _splice is not None
        try:
            n = _splice(way.src_fd, way.pipe_w, way.pipe_size - way.in_pipe, flags=_SPLICE_FLAGS)
        except _WOULD_BLOCK:
            return
        except OSError as exc:
            if exc.errno not in _NO_SPLICE:
                raise
            self._to_copy(way)
            self._copy_in(way)
            return
        if n == 0:
            self._eof(way)
            return
        self.last_active = self._loop.time()
        way.in_pipe += n
        if not self._flush(way):
            self._stop_read(way)
            self._want_write(way)
        else:
            _raise_pending_error(way.src)

    def _flush(self, way: _Way) -> bool:
        """Write what is pending (kept bytes first, then the pipe); True once all is out."""
        if way.held:
            try:
                sent = way.dst.send(way.held)
            except _WOULD_BLOCK:
                return False
            way.moved += sent
            if sent < len(way.held):
                way.held = way.held[sent:]
                return False
            way.held = _EMPTY
        while way.in_pipe:
            assert _splice is not None
            try:
                n = _splice(way.pipe_r, way.dst_fd, way.in_pipe, flags=_SPLICE_FLAGS)
            except _WOULD_BLOCK:
                return False
            except OSError as exc:
                if exc.errno not in _NO_SPLICE:
                    raise
                self._to_copy(way)
                return self._flush(way)
            if n <= 0:  # cannot happen with bytes in the pipe; never spin on it
                raise OSError(errno.EIO, "splice to the destination wrote nothing")
            way.in_pipe -= n
            way.moved += n
        return True

    def _to_copy(self, way: _Way) -> None:
        """Splice refused these sockets: take back what is in the pipe, copy from now on."""
        taken = [bytes(way.held)]
        while way.in_pipe:
            chunk = os.read(way.pipe_r, way.in_pipe)
            if not chunk:
                break
            taken.append(chunk)
            way.in_pipe -= len(chunk)
        way.held = memoryview(b"".join(taken)) if any(taken) else _EMPTY
        way.in_pipe = 0
        self._close_pipe(way)
        way.pipe_size = 0
        way.can_splice = False

    # -- ending -----------------------------------------------------------------------------
    def _eof(self, way: _Way) -> None:
        way.eof = True
        self._stop_read(way)
        if not way.pending:
            self._shut(way)

    def _shut(self, way: _Way) -> None:
        """Everything from src is out: pass its EOF on; end when both ways are done."""
        way.done = True
        self._stop_read(way)
        self._stop_write(way)
        with contextlib.suppress(OSError):  # the peer is gone: the other way finds out how
            way.dst.shutdown(socket.SHUT_WR)
        if self._ab.done and self._ba.done:
            self._finish(None, reset=False)

    def _fail(self, exc: Exception) -> None:
        if self._state != _CLOSED:
            self.broken_end = "a" if _broken(self._a) else "b" if _broken(self._b) else None
            self._finish(exc, reset=True)

    def _finish(self, exc: Exception | None, *, reset: bool) -> None:
        self._state = _CLOSED
        for way in (self._ab, self._ba):
            self._stop_read(way)
            self._stop_write(way)
            self._close_pipe(way)
            way.done = True
            way.held = _EMPTY
            way.in_pipe = 0
        for sock in (self._a, self._b):
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()
        on_done, self._on_done = self._on_done, None
        if on_done is None:
            return
        try:
            on_done(self, exc)
        except Exception as cb_exc:
            self._loop.call_exception_handler(
                {"message": "Pump on_done callback failed", "exception": cb_exc, "pump": self}
            )

    def _close_pipe(self, way: _Way) -> None:
        if way.pipe_w >= 0:
            os.close(way.pipe_r)
            os.close(way.pipe_w)
            way.pipe_r = way.pipe_w = -1

    # -- event-loop registrations -----------------------------------------------------------
    def _want_read(self, way: _Way) -> None:
        if not way.reading:
            way.reading = True
            self._loop.add_reader(way.src_fd, self._readable, way)

    def _stop_read(self, way: _Way) -> None:
        if way.reading:
            way.reading = False
            self._loop.remove_reader(way.src_fd)

    def _want_write(self, way: _Way) -> None:
        if not way.writing:
            way.writing = True
            self._loop.add_writer(way.dst_fd, self._writable, way)

    def _stop_write(self, way: _Way) -> None:
        if way.writing:
            way.writing = False
            self._loop.remove_writer(way.dst_fd)
