"""The ``gatekeeper`` command. ``main(argv) -> int``; the only place that decides exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from gatekeeper import __version__, config
from gatekeeper.errors import ConfigError, GatekeeperError
from gatekeeper.events import Ban

log = logging.getLogger("gatekeeper")

EXIT_OK = 0
EXIT_ERROR = 1  # config problems, a failed check, a daemon that could not start
EXIT_NOT_RUNNING = 3  # gatekeeper status: the daemon is not running (as systemctl status)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", type=Path, default=None, metavar="PATH",
        help="configuration file (default: $GATEKEEPER_CONFIG or /etc/gatekeeper/gatekeeper.yaml)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatekeeper",
        description="Gate, proxy and log connections to IBM i FTP and Telnet servers.",
    )
    parser.add_argument("--version", action="version", version=f"gatekeeper {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon in the foreground")
    _config_option(run)
    run.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    run.set_defaults(func=cmd_run)

    check = commands.add_parser("check", help="validate the configuration and every rule file")
    _config_option(check)
    check.set_defaults(func=cmd_check)

    lookup = commands.add_parser("lookup", help="show the decision for an address")
    _config_option(lookup)
    lookup.add_argument("address", metavar="IP")
    lookup.add_argument("--listener", metavar="NAME", help="only this listener")
    lookup.add_argument("--at", metavar="ISO-TIME", help="decide as at this time (default: now)")
    lookup.add_argument("--format", choices=("text", "json"), default="text")
    lookup.set_defaults(func=cmd_lookup)

    report = commands.add_parser("report", help="the rejection report")
    _config_option(report)
    report.add_argument("--level", choices=("summary", "detail"), default="summary")
    report.add_argument("--service", default="both", metavar="NAME|both")
    report.add_argument("--since", metavar="DATE", help="YYYY-MM-DD (local) or ISO timestamp")
    report.add_argument("--until", metavar="DATE", help="YYYY-MM-DD (local) or ISO timestamp")
    report.add_argument("--format", choices=("text", "json", "csv"), default="text")
    report.set_defaults(func=cmd_report)

    stats = commands.add_parser(
        "stats", help="the trend report: connections per day, quiet days, top lists"
    )
    _config_option(stats)
    stats.add_argument("--since", metavar="DATE", help="YYYY-MM-DD (local) or ISO timestamp")
    stats.add_argument("--until", metavar="DATE", help="YYYY-MM-DD (local) or ISO timestamp")
    stats.add_argument("--format", choices=("text", "json"), default="text")
    stats.add_argument("--top", type=int, default=10, metavar="N",
                       help="rows of the top addresses and user names (default: 10)")  # fmt: skip
    stats.set_defaults(func=cmd_stats)

    web = commands.add_parser(
        "web", help="serve the report pages (default 127.0.0.1:8020)",
        description="Serve the report pages on web.listen. Beyond a loopback address a "
        "login is required: web: {user: NAME, password_hash: LINE} in the configuration.",
    )  # fmt: skip
    _config_option(web)
    web.add_argument(
        "--hash-password", action="store_true",
        help="read a password (from standard input, or asked without echo) and print the "
        "line to write as web.password_hash; serves nothing",
    )  # fmt: skip
    web.set_defaults(func=cmd_web)

    status = commands.add_parser(
        "status", help="what the running daemon is doing",
        description="Listeners, sessions, counts, rules and the last reload of the running "
        "daemon, from the status file it rewrites every second. Exit status 3 when it is "
        "not running.",
    )  # fmt: skip
    _config_option(status)
    status.add_argument("--format", choices=("text", "json"), default="text")
    status.set_defaults(func=cmd_status)

    bans = commands.add_parser(
        "bans", help="show or lift automatic bans",
        description="List the active automatic bans (the default), or lift the one covering "
        "an address; the running daemon applies a lift within a second.",
    )  # fmt: skip
    _config_option(bans)
    bans.add_argument("--format", choices=("text", "json"), default="text")
    bans.set_defaults(func=cmd_bans, action="list")
    actions = bans.add_subparsers(dest="action", metavar="ACTION")
    # Options may come before or after the action: after it, SUPPRESS keeps an option not
    # given from overwriting the one given before it.
    bans_list = actions.add_parser("list", help="the active bans (the default)")
    bans_lift = actions.add_parser("lift", help="lift the ban covering an address")
    bans_lift.add_argument("address", metavar="IP", help="an address, or a ban's key")
    for sub in (bans_list, bans_lift):
        sub.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS, metavar="PATH",
                         help="configuration file")  # fmt: skip
        sub.add_argument("--format", choices=("text", "json"), default=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = config.default_config_path()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_ERROR
    except GatekeeperError as exc:
        print(f"gatekeeper: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR


# -- run ---------------------------------------------------------------------------------
def _setup_logging(verbose: bool) -> None:
    # Under systemd the journal stamps each line; elsewhere we do.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"{stamp}%(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)


def _runner() -> asyncio.Runner:
    """uvloop when installed, asyncio otherwise: the one place the loop is chosen.

    ``GATEKEEPER_LOOP=asyncio`` forces the standard loop (for comparisons and debugging).
    """
    if os.environ.get("GATEKEEPER_LOOP") == "asyncio":
        return asyncio.Runner()
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def cmd_run(args: argparse.Namespace) -> int:
    from gatekeeper.app import App

    _setup_logging(args.verbose)

    async def start() -> int:
        return await App(args.config).run()

    with _runner() as runner:
        return runner.run(start())


# -- check -------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    from gatekeeper.rules.engine import RuleSet

    settings, spec = config.load(args.config, check_geoip=True)
    counts = RuleSet.build(spec).counts()
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    print(f"{settings.path}: ok ({len(settings.listeners)} listeners; {summary})")
    return EXIT_OK


# -- lookup ------------------------------------------------------------------------------
def _parse_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise GatekeeperError(f"--at {text!r}: write an ISO time, e.g. 2026-11-23T08:30") from None
    # Rules' hours are local time: an aware time is converted, a naive one is already local.
    return when.astimezone().replace(tzinfo=None) if when.tzinfo else when


def cmd_lookup(args: argparse.Namespace) -> int:
    from gatekeeper.geo import GeoLocator
    from gatekeeper.rules.engine import RuleSet
    from gatekeeper.settings import normalise_address

    settings, spec = config.load(args.config)
    locator = GeoLocator.open(settings.geoip)  # unusable: one warning, countries unknown
    ruleset = RuleSet.build(spec, country_of=locator.country)
    try:
        address = str(normalise_address(args.address))
    except ValueError:
        raise GatekeeperError(f"{args.address!r} is not an IPv4 or IPv6 address") from None
    names = [x.name for x in settings.listeners]
    if args.listener is not None:
        if args.listener not in names:
            raise GatekeeperError(
                f"no listener {args.listener!r} in {settings.path} (listeners: {', '.join(names)})"
            )
        names = [args.listener]
    at = _parse_at(args.at) or datetime.now()
    rows: list[dict[str, str | None]] = []
    for name in names:
        d = ruleset.decide(address, name, at)
        rows.append({
            "listener": name,
            "action": d.action.value,
            "reason": d.reason.value,
            "match": d.match,
            "source": str(d.source) if d.source is not None else None,
        })  # fmt: skip
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            source = row["source"] or "(no default: line in any rule file)"
            fields = (row["listener"], row["action"], row["reason"], row["match"] or "-", source)
            print("\t".join(str(f) for f in fields))
    return EXIT_OK


# -- report ------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from gatekeeper.report import query, render

    settings = config.load_settings(args.config)
    names = [x.name for x in settings.listeners]
    if args.service != "both" and args.service not in names:
        raise GatekeeperError(f"--service {args.service!r}: use one of {', '.join(names)} or both")
    try:
        report = query.rejection_report(
            settings.database, level=args.level, service=args.service,
            since=args.since, until=args.until,
        )  # fmt: skip
    except ValueError as exc:
        raise GatekeeperError(str(exc)) from None
    letters = {x.name: x.letter for x in settings.listeners}
    if args.format == "json":
        out = render.render_json(report)
    elif args.format == "csv":
        out = render.render_csv(report)
    else:
        out = render.render_text(report, letters=letters)
    sys.stdout.write(out if out.endswith("\n") else out + "\n")
    return EXIT_OK


# -- stats -------------------------------------------------------------------------------
def cmd_stats(args: argparse.Namespace) -> int:
    from gatekeeper.report import render
    from gatekeeper.report.stats import trend_stats

    settings = config.load_settings(args.config)
    try:
        stats = trend_stats(settings.database, since=args.since, until=args.until, top=args.top)
    except ValueError as exc:
        raise GatekeeperError(str(exc)) from None
    if args.format == "json":
        sys.stdout.write(render.render_stats_json(stats))
    else:
        sys.stdout.write(render.render_stats_text(stats))
    return EXIT_OK


# -- web ---------------------------------------------------------------------------------
def _read_password() -> str:
    """One line of standard input, or asked twice without echo on a terminal."""
    import getpass

    if sys.stdin is not None and not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password for the report pages: ")
        if getpass.getpass("The same again: ") != password:
            raise GatekeeperError("the two passwords differ; nothing printed")
    if not password:
        raise GatekeeperError("the password is empty; nothing printed")
    return password


def cmd_web(args: argparse.Namespace) -> int:
    if args.hash_password:
        from gatekeeper.report.web import hash_password

        print(hash_password(_read_password()))
        return EXIT_OK
    from gatekeeper.report.web import check_exposure, serve

    settings = config.load_settings(args.config)
    check_exposure(settings)  # before anything is bound
    _setup_logging(False)
    with _runner() as runner:
        runner.run(serve(settings))
    return EXIT_OK


# -- status ------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _counts(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return f"{total} ({detail})" if detail else "0"


def _status_text(data: dict[str, Any], now: float) -> str:
    lines = [
        f"gatekeeper {data['version']}: running, pid {data['pid']}, "
        f"up {_duration(now - data['started'])} (config {data['config']})"
    ]
    head = ("LISTENER", "PROTOCOL", "ADDRESS", "UPSTREAM", "MODE", "SESSIONS", "ACCEPTED",
            "REJECTED")  # fmt: skip
    rows = [head] + [
        (x["name"], x["protocol"], x["address"], x["upstream"], x["mode"], str(x["sessions"]),
         str(x["accepted"]), _counts(x["rejected"])
         + (f"; would reject {_counts(x['would_reject'])}" if x["would_reject"] else ""))
        for x in data["listeners"]
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        cells = zip(r, widths, strict=True)
        lines.append("  " + "  ".join(c.ljust(w) for c, w in cells).rstrip())
    lines.append("rules: " + ", ".join(f"{v} {k}" for k, v in data["rules"].items()))
    bans, rec = data["bans"], data["recorder"]
    lines.append(f"bans: {bans['active']} active, {bans['total']} made since start")
    lines.append(f"recorder: {rec['pending']} pending, {rec['dropped']} dropped")
    last = data["last_reload"]
    reloads = f"reloads: {data['reloads']}, failed {data['reload_failures']}"
    if last is not None:
        reloads += f"; last at {_local_time(last)}"
    if data["last_reload_failed"]:
        reloads += "; the LAST RELOAD FAILED (the previous configuration is in force)"
    lines.append(reloads)
    if data.get("metrics"):
        lines.append(f"metrics: http://{data['metrics']}/metrics")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from gatekeeper.metrics import read_status

    settings = config.load_settings(args.config)
    assert settings.status_file is not None  # the loader always sets it
    now = time.time()
    found = read_status(settings.status_file, now)
    if args.format == "json":
        out: dict[str, Any] = dict(found.data or {})
        out["running"] = found.running
        if not found.running:
            out["why"] = found.why
        print(json.dumps(out, indent=2))
    elif found.running and found.data is not None:
        print(_status_text(found.data, now))
    else:
        print(f"gatekeeper ({settings.path}): not running ({found.why})")
    return EXIT_OK if found.running else EXIT_NOT_RUNNING


# -- bans --------------------------------------------------------------------------------
def _local_time(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def _utc_time(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _ban_dict(ban: Ban) -> dict[str, object]:
    return {
        "key": ban.key,
        "address": ban.address,
        "listener": ban.listener,
        "since": _utc_time(ban.since),
        "until": _utc_time(ban.until),
        "failures": ban.failures,
    }


def _ban_table(bans: Sequence[Ban]) -> str:
    head = ("KEY", "ADDRESS", "LISTENER", "SINCE", "UNTIL", "FAILURES")
    rows = [head] + [
        (b.key, b.address, b.listener, _local_time(b.since), _local_time(b.until),
         str(b.failures)) for b in bans
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def cmd_bans(args: argparse.Namespace) -> int:
    from gatekeeper.bans import covering_keys
    from gatekeeper.store.recorder import active_bans, lift_bans

    settings = config.load_settings(args.config)
    if args.action == "lift":
        try:
            keys = covering_keys(args.address)
        except ValueError:
            raise GatekeeperError(
                f"{args.address!r} is not an IPv4 or IPv6 address or a ban's key"
            ) from None
        lifted = lift_bans(settings.database, keys)
        if not lifted:
            raise GatekeeperError(f"no active ban covers {args.address}")
        if args.format == "json":
            print(json.dumps({"lifted": [_ban_dict(b) for b in lifted]}, indent=2))
        else:
            for b in lifted:
                print(f"lifted the ban on {b.key} (address {b.address}, listener {b.listener}, "
                      f"until {_local_time(b.until)}, {b.failures} failures)")  # fmt: skip
        return EXIT_OK
    bans = active_bans(settings.database)
    if args.format == "json":
        print(json.dumps([_ban_dict(b) for b in bans], indent=2))
    elif not bans:
        print("no bans")
    else:
        print(_ban_table(bans))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
