"""The least a Python TCP proxy can do: the floor under gatekeeper's latency figures.

Accept, connect to the upstream, copy bytes both ways with ``recv``/``send`` from reader
callbacks on uvloop, pass EOF on, close. No rules, no records, no timeouts, no flow
control: not a server to run, only a measure of what the language and event loop cost
per connection on this machine, beside HAProxy and gatekeeper in ``bench_latency``.

    python -m benchmarks.floor_proxy LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import contextlib
import socket
import sys

import uvloop


def serve(port: int, upstream: int) -> None:
    loop = uvloop.new_event_loop()
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    listener.setblocking(False)

    def forward(src: socket.socket, dst: socket.socket, ends: list[int]) -> None:
        try:
            data = src.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            with contextlib.suppress(OSError):
                dst.send(data)
            return
        loop.remove_reader(src.fileno())
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        ends.append(1)
        if len(ends) == 2:
            loop.remove_reader(dst.fileno())
            src.close()
            dst.close()

    def connected(client: socket.socket, up: socket.socket) -> None:
        loop.remove_writer(up.fileno())
        ends: list[int] = []
        loop.add_reader(client.fileno(), forward, client, up, ends)
        loop.add_reader(up.fileno(), forward, up, client, ends)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except BlockingIOError:
                return
            client.setblocking(False)
            up = socket.socket()
            up.setblocking(False)
            up.connect_ex(("127.0.0.1", upstream))
            loop.add_writer(up.fileno(), connected, client, up)

    loop.add_reader(listener.fileno(), accept)
    loop.run_forever()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
