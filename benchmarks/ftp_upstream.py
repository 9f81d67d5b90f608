"""A pyftpdlib server for benchmarks: anonymous read access to one folder."""

from __future__ import annotations

import argparse
import logging

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    authorizer = DummyAuthorizer()
    authorizer.add_user("bench", "bench", args.root, perm="elr")
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer})
    FTPServer(("127.0.0.1", args.port), handler).serve_forever()


if __name__ == "__main__":
    main()
