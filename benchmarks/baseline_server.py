"""The reference: a minimal asyncio server that accepts and closes (or writes a 421 first)."""

from __future__ import annotations

import argparse
import asyncio
import socket

REPLY_421 = b"421 Service not available, closing control connection.\r\n"


class AcceptClose(asyncio.Protocol):
    reply = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.reply:
            transport.write(self.reply)  # type: ignore[attr-defined]
        transport.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--reply", action="store_true", help="write a 421 line before closing")
    args = parser.parse_args()
    AcceptClose.reply = REPLY_421 if args.reply else b""

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            AcceptClose, "127.0.0.1", args.port, backlog=socket.SOMAXCONN, reuse_address=True
        )
        async with server:
            await server.serve_forever()

    if args.loop == "uvloop":
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
