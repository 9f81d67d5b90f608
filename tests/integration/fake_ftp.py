"""A scripted FTP upstream for fault tests: it signs anyone on, serves PASV, RETR and STOR,
and misbehaves as told (resets, aborted data connections, uploads never read)."""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import struct
import threading
import time
from typing import Any

# Faults the fake upstream can play on a transfer (one per RETR/STOR, in order):
RESET_CONTROL = "reset-control"  # RST on the control connection while the data flows
CLOSE_DATA = "close-data"  # FIN on the data connection halfway, then 426
ABORT_DATA = "abort-data"  # RST on the data connection halfway, then 426
NEVER_READ = "never-read"  # STOR: accept the data connection, never read it
_LINGER_RESET = struct.pack("ii", 1, 0)
CHUNK = 64 * 1024


class FakeFtp:
    """A scripted FTP upstream: signs anyone on, serves PASV, RETR of ``payload`` and STOR,
    and plays the ``faults`` given, one per transfer, in order (None: behave). ``trickle``
    (chunk size, delay) sends RETR data slowly. Counts the control connections that ended.
    A control reset waits for ``go`` (set by the test once the client has seen data flow)."""

    def __init__(
        self,
        faults: tuple[str | None, ...] = (),
        *,
        size: int = 4 << 20,
        fault_at: int = 1 << 20,
        trickle: tuple[int, float] | None = None,
    ) -> None:
        self.faults = list(faults)
        self.payload = os.urandom(size)
        self.fault_at = fault_at
        self.trickle = trickle
        self.ended = 0  # control connections that ended, whoever closed them
        self.held: list[socket.socket] = []  # data connections never read (NEVER_READ)
        self.go = threading.Event()
        self.lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    outer._session(self.request)
                except OSError:
                    pass
                finally:
                    with outer.lock:
                        outer.ended += 1

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for conn in self.held:
            conn.close()

    def _fault(self) -> str | None:
        with self.lock:
            return self.faults.pop(0) if self.faults else None

    def _session(self, ctrl: socket.socket) -> None:
        reader = ctrl.makefile("rb")
        passive: socket.socket | None = None
        ctrl.sendall(b"220 fake IBM i FTP server ready\r\n")
        try:
            while line := reader.readline(4096):
                verb, _, _ = line.decode("latin-1").strip().partition(" ")
                verb = verb.upper()
                if verb == "USER":
                    ctrl.sendall(b"331 Enter password.\r\n")
                elif verb == "PASS":
                    ctrl.sendall(b"230 User logged on.\r\n")
                elif verb in ("TYPE", "NOOP"):
                    ctrl.sendall(b"200 OK.\r\n")
                elif verb == "PASV":
                    if passive is not None:
                        passive.close()
                    passive = socket.create_server(("127.0.0.1", 0))
                    port = passive.getsockname()[1]
                    reply = f"227 Entering Passive Mode (127,0,0,1,{port >> 8},{port & 255}).\r\n"
                    ctrl.sendall(reply.encode())
                elif verb in ("RETR", "STOR") and passive is not None:
                    ctrl.sendall(b"150 Opening data connection.\r\n")
                    passive.settimeout(10)
                    data, _ = passive.accept()
                    passive.close()
                    passive = None
                    data.settimeout(10)
                    transfer = self._retr if verb == "RETR" else self._stor
                    if not transfer(ctrl, reader, data, self._fault()):
                        return  # the control connection is gone
                elif verb == "QUIT":
                    ctrl.sendall(b"221 Goodbye.\r\n")
                    return
                else:
                    ctrl.sendall(b"502 Command not implemented.\r\n")
        finally:
            if passive is not None:
                passive.close()
            reader.close()

    def _retr(
        self, ctrl: socket.socket, reader: Any, data: socket.socket, fault: str | None
    ) -> bool:
        """Send the payload (or part of it and fail); False if the control connection went."""
        cut = len(self.payload) if fault is None else self.fault_at
        step = CHUNK if self.trickle is None else self.trickle[0]
        try:
            for i in range(0, cut, step):
                data.sendall(self.payload[i : min(i + step, cut)])
                if self.trickle is not None:
                    time.sleep(self.trickle[1])  # a slow upstream, not a wait for an event
        except OSError:
            data.close()
            return True
        if fault == RESET_CONTROL:  # the IBM i job dies: RST on control, data still open
            self.go.wait(10)
            reader.close()
            ctrl.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            ctrl.close()
            with contextlib.suppress(OSError):  # until gatekeeper cuts the data connection
                for i in range(cut, len(self.payload), CHUNK):
                    data.sendall(self.payload[i : i + CHUNK])
            data.close()
            return False
        if fault == ABORT_DATA:
            data.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        data.close()
        if fault in (CLOSE_DATA, ABORT_DATA):
            ctrl.sendall(b"426 Connection closed; transfer aborted.\r\n")
        else:
            ctrl.sendall(b"226 Transfer complete.\r\n")
        return True

    def _stor(
        self, ctrl: socket.socket, reader: Any, data: socket.socket, fault: str | None
    ) -> bool:
        if fault == NEVER_READ:
            self.held.append(data)  # its receive queue fills; the sender must stop
            return True
        with contextlib.suppress(OSError):
            while data.recv(CHUNK):
                pass
        data.close()
        ctrl.sendall(b"226 Transfer complete.\r\n")
        return True
