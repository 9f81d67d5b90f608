"""Read ``gatekeeper.yaml`` and the rule files; hand the core plain frozen dataclasses.

pydantic stops here. The loader keeps YAML's node tree so every problem, whether a YAML
syntax error, a pydantic validation error or a cross-check (unknown listener, a scalar set
in two rule files), names the file and the line an administrator has to edit, and says
what to write instead. All problems of a run are collected and raised together in one
:class:`~gatekeeper.errors.ConfigError`.

YAML is read with PyYAML's ``SafeLoader`` but with YAML 1.2 scalars: only ``true`` and
``false`` are booleans (``NO`` stays Norway's country code, not ``False``), and
``10:20`` is text, not the base-60 number 620. Boolean settings still accept
``yes``/``no``/``on``/``off``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import socket
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from glob import glob
from operator import itemgetter
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)

from gatekeeper.errors import ConfigError, GatekeeperError, Problem
from gatekeeper.ftp import tls
from gatekeeper.rules.hours import Hours
from gatekeeper.rules.model import (
    Action,
    BanPolicy,
    FtpPolicy,
    ListedNetworks,
    ListedRules,
    Network,
    Rule,
    RulesSpec,
    Source,
    UserPolicy,
)
from gatekeeper.rules.trie import gc_paused
from gatekeeper.settings import (
    SYSLOG_FACILITIES,
    GeoipSettings,
    HostPort,
    Limits,
    ListenerSettings,
    Mode,
    Protocol,
    RejectStyle,
    Settings,
    SyslogSettings,
    Timeouts,
    TlsSettings,
    WebAuth,
    parse_network,
    parse_password_hash,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "default_config_path",
    "load",
    "load_rules",
    "load_settings",
    "parse_duration",
    "parse_network_list",
]

DEFAULT_CONFIG_PATH = Path("/etc/gatekeeper/gatekeeper.yaml")
DEFAULT_RULES = "rules.d/*.yaml"
# A broken 100,000-line blocklist should not print 100,000 lines: the first few tell the story.
MAX_PROBLEMS_PER_LIST = 20

Loc = tuple[int | str, ...]


def default_config_path() -> Path:
    """``$GATEKEEPER_CONFIG`` if set, else ``/etc/gatekeeper/gatekeeper.yaml``."""
    env = os.environ.get("GATEKEEPER_CONFIG", "").strip()
    return Path(env) if env else DEFAULT_CONFIG_PATH


# --------------------------------------------------------------------------------------
# Scalars: durations, host:port, networks, network lists


# A value quoted in a problem message is cut to this many characters: a 1 MB line in a
# blocklist (or a 1 MB scalar in YAML) must not make a 1 MB message, twenty times over.
MAX_SHOWN = 64
PATH_SHOWN = 256  # a path named in a message (a real one is shorter; PATH_MAX is 4096)


def _cut(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` for a message, unquoted, cut to about ``limit`` characters."""
    return text if len(text) <= limit else text[:limit] + "…"


def _shown(value: object, limit: int = MAX_SHOWN) -> str:
    """``repr(value)``, cut to about ``limit`` characters."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + "…"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_DURATION = re.compile(
    r"(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:ms|s|m|h|d|w)\s*)+", re.IGNORECASE
)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_HELP = "write a number and a unit: 30s, 10m, 1h, 7d (a bare number is seconds)"


def parse_duration(value: str | int | float) -> float:
    """``"30s"``, ``"10m"``, ``"1h"``, ``"7d"``, ``"1h30m"`` or a bare number of seconds."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"bad duration {_shown(value)}: {_DURATION_HELP}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if not _DURATION.fullmatch(text):
                raise ValueError(f"bad duration {_shown(value)}: {_DURATION_HELP}") from None
            seconds = sum(
                float(num) * _UNIT_SECONDS[unit.lower()]
                for num, unit in _DURATION_PART.findall(text)
            )
    if not math.isfinite(seconds):
        raise ValueError(f"bad duration {_shown(value)}: {_DURATION_HELP}")
    if seconds < 0:
        raise ValueError(f"bad duration {_shown(value)}: a duration cannot be negative")
    return seconds


_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _check_host(host: str, text: str) -> str:
    """An IP address (returned in its canonical form) or a DNS name (lower-cased)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host):
        raise ValueError(f"bad address {_shown(host)} in {_shown(text)}: not a valid IPv4 address")
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"bad host {_shown(host)} in {_shown(text)}: write an IP address or a host name "
            "(letters, digits, '-' and '.')"
        )
    return host.lower()


def parse_host_port(
    value: object, *, what: str = "address", allow_port_zero: bool = False
) -> HostPort:
    """``"host:port"`` or ``"[v6]:port"``; the port is 1-65535 (0 too when allowed)."""
    example = '"0.0.0.0:21"' if allow_port_zero else '"ibmi.example.com:21"'
    if not isinstance(value, str):
        raise ValueError(
            f"bad {what} {_shown(value)}: write host:port in quotes, e.g. {example} "
            '(IPv6: "[::]:21")'
        )
    text = value.strip()
    bracketed = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", text)
    if bracketed:
        host, port_text = bracketed.groups()
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(
                f"bad {what} {_shown(text)}: {_shown(host)} in brackets is not an IPv6 address"
            ) from None
    elif text.startswith("["):
        raise ValueError(f"bad {what} {_shown(text)}: write [IPv6 address]:port, e.g. [::1]:21")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(
                f"bad {what} {_shown(text)}: the port is missing; write e.g. {example}"
            )
        if ":" in host:
            raise ValueError(
                f"bad {what} {_shown(text)}: write an IPv6 address in brackets, "
                f"e.g. [{_cut(host)}]:{_cut(port_text)}"
            )
        if not host:
            raise ValueError(
                f"bad {what} {_shown(text)}: the host is missing; write e.g. 0.0.0.0:{port_text} "
                f"(every IPv4 address) or [::]:{port_text} (every address)"
            )
        host = _check_host(host, text)
    lowest = 0 if allow_port_zero else 1
    if not port_text.isascii() or not port_text.isdigit() or not lowest <= int(port_text) <= 65535:
        raise ValueError(
            f"bad {what} {_shown(text)}: the port must be a number from {lowest} to 65535"
        )
    return HostPort(host, int(port_text))


def network_from_text(text: str) -> Network:
    """:func:`~gatekeeper.settings.parse_network` with messages that say what to write."""
    try:
        return parse_network(text)
    except ValueError:
        pass
    t = text.strip()
    if not t:
        raise ValueError("empty network: write a CIDR such as 10.0.0.0/8 or an address")
    try:
        loose = ipaddress.ip_network(t, strict=False)
    except ValueError:
        pass
    else:
        raise ValueError(f"bad network {_shown(t)}: {t} has host bits set; did you mean {loose}?")
    if re.fullmatch(r"[0-9a-fA-F.:]+\s*-\s*[0-9a-fA-F.:]+", t):
        detail = "address ranges are not supported"
    else:
        detail = "not an IPv4 or IPv6 network"
        family: Callable[[str], object] | None = None
        if ":" in t:
            family = ipaddress.IPv6Network
        elif "." in t:
            family = ipaddress.IPv4Network
        if family is not None:
            try:
                family(t)
            except ValueError as exc:
                detail = str(exc)  # ipaddress quotes the text whole: cut it
                if len(detail) > 2 * MAX_SHOWN:
                    detail = detail[: 2 * MAX_SHOWN] + "…"
    raise ValueError(
        f"bad network {_shown(t)}: {detail}; write a CIDR such as 10.0.0.0/8 or 2001:db8::/32, "
        "or a single address"
    )


# Fast paths for the common lines of a blocklist: a plain IPv4 or IPv6 CIDR (or address),
# maybe with a comment. The octet pattern refuses leading zeros and values over 255 exactly
# as ipaddress does; an IPv6 line of hex digits and colons only is read by inet_pton, which
# takes the same texts as ipaddress there. A line neither fast path takes (odd spacing, host
# bits set, IPv4-mapped or embedded-IPv4 IPv6, a zone id, garbage) goes through ipaddress
# for the exact verdict and the message.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_FAST_V4 = re.compile(
    rf"[ \t]*({_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET})(?:/([0-9]{{1,2}}))?[ \t\r]*(?:[#;].*)?"
)
_FAST_V6 = re.compile(r"[ \t]*([0-9A-Fa-f:]{2,39})(?:/([0-9]{1,3}))?[ \t\r]*(?:[#;].*)?")
_IPV4_MAPPED_FIRST = 0xFFFF << 32  # ::ffff:0.0.0.0, the first IPv4-mapped IPv6 address
_IPV4_MAPPED_LAST = _IPV4_MAPPED_FIRST | 0xFFFF_FFFF
_HOST_BITS4 = [(1 << (32 - length)) - 1 for length in range(33)]  # by prefix length
_HOST_BITS6 = [(1 << (128 - length)) - 1 for length in range(129)]


def parse_network_list(text: str, file: str) -> tuple[list[tuple[Network, int]], list[Problem]]:
    """Parse a FireHOL netset / Spamhaus DROP style list: one network per line.

    ``#`` and ``;`` start a comment (also after the network), blank lines are skipped.
    Returns ``(network, line)`` pairs and a problem per bad line; never raises.
    """
    v4, v6, problems = _parse_network_lines(text, file)
    with gc_paused():  # many objects, none garbage: see gc_paused
        networks = v4.networks()
        if len(v6):
            networks = sorted(networks + v6.networks(), key=itemgetter(1))  # by line
    return networks, problems


def _parse_network_lines(
    text: str, file: str
) -> tuple[ListedNetworks, ListedNetworks, list[Problem]]:
    """``parse_network_list``, its networks left as ints (see ``ListedRules``)."""
    prefixes4, lengths4, lines4 = array("L"), bytearray(), array("l")
    prefixes6: list[int] = []
    lengths6, lines6 = bytearray(), array("l")
    exact4: dict[int, Network] = {}
    exact6: dict[int, Network] = {}
    problems: list[Problem] = []
    fast4, fast6 = _FAST_V4.fullmatch, _FAST_V6.fullmatch
    aton, pton, from_bytes = socket.inet_aton, socket.inet_pton, int.from_bytes
    af_inet6 = socket.AF_INET6
    for lineno, line in enumerate(text.split("\n"), 1):
        # A line the fast paths do not take (host bits set, say) goes on to the slow path.
        if ":" not in line:
            m = fast4(line)
            if m is not None:
                address, plen = m.groups()
                length = 32 if plen is None else int(plen)
                value = from_bytes(aton(address), "big")
                if length <= 32 and not value & _HOST_BITS4[length]:
                    prefixes4.append(value)
                    lengths4.append(length)
                    lines4.append(lineno)
                    continue
        elif (m := fast6(line)) is not None:
            address, plen = m.groups()
            length = 128 if plen is None else int(plen)
            try:
                value = from_bytes(pton(af_inet6, address), "big")
            except OSError:
                value = -1  # not an address
            if (
                value >= 0
                and length <= 128
                and not value & _HOST_BITS6[length]
                and not _IPV4_MAPPED_FIRST <= value <= _IPV4_MAPPED_LAST
            ):
                prefixes6.append(value)
                lengths6.append(length)
                lines6.append(lineno)
                continue
        body = line.split("#", 1)[0].split(";", 1)[0].strip()
        if not body:
            continue
        try:
            network = network_from_text(body)
        except ValueError as exc:
            problems.append(Problem(file, lineno, str(exc)))
            continue
        value, length = int(network.network_address), network.prefixlen
        if isinstance(network, ipaddress.IPv4Network):
            exact4[len(prefixes4)] = network
            prefixes4.append(value)
            lengths4.append(length)
            lines4.append(lineno)
        else:
            exact6[len(prefixes6)] = network
            prefixes6.append(value)
            lengths6.append(length)
            lines6.append(lineno)
    return (
        ListedNetworks(False, prefixes4, bytes(lengths4), lines4, exact4),
        ListedNetworks(True, prefixes6, bytes(lengths6), lines6, exact6),
        problems,
    )


# --------------------------------------------------------------------------------------
# YAML with line numbers

_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"  # YAML 1.2 has none: 2024-01-01 is text


_MERGE_TAG = "tag:yaml.org,2002:merge"  # YAML 1.1's "<<" key; YAML 1.2 has none
# Collections inside collections. Real files nest four or five deep (listeners, a listener,
# its tls); PyYAML composes recursively, so thousands of "[" would exhaust Python's stack.
MAX_YAML_DEPTH = 64


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars (no ``NO`` → False, no base 60, no dates), hardened.

    Hostile files get a problem with a line, never an exception or unbounded work: nesting
    deeper than ``MAX_YAML_DEPTH`` is refused while composing; merge keys (``<<``, YAML 1.1
    only) are plain keys, and an explicit ``!!merge`` tag is refused (each merge copies the
    merged mapping's pairs, so merges of merges grow exponentially: a "billion laughs");
    a value its constructor cannot read (``!!timestamp foo``, an integer of 5,000 digits)
    is a problem at its line.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        for key, _ in node.value:
            if key.tag == _MERGE_TAG:
                raise yaml.constructor.ConstructorError(
                    None, None, "merge keys (!!merge) are not supported", key.start_mark
                )
        super().flatten_mapping(node)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception:  # ValueError, AttributeError...: a value it cannot read
            kind = node.tag.rsplit(":", 1)[-1]
            value = _shown(node.value) if isinstance(node, yaml.ScalarNode) else "this value"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {value} as {kind}", node.start_mark
            ) from None


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in (_BOOL_TAG, _INT_TAG, _FLOAT_TAG, _TIMESTAMP_TAG, _MERGE_TAG)
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?[0-9]+[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


@dataclass(slots=True)
class _Doc:
    """A parsed YAML file: the plain data and the node tree to find lines in."""

    file: str
    root: yaml.Node | None
    data: Any

    def line(self, loc: Sequence[int | str]) -> int:
        """1-based line of the deepest node ``loc`` reaches (a key's line for a collection)."""
        node = self.root
        if node is None:
            return 1
        line: int = node.start_mark.line + 1
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                found: tuple[yaml.Node, yaml.Node] | None = None
                for key, value in node.value:  # the last one wins, as in YAML
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        found = (key, value)
                if found is None:
                    break
                key, node = found
                mark = node.start_mark if isinstance(node, yaml.ScalarNode) else key.start_mark
                line = mark.line + 1
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line


def _yaml_problem(exc: yaml.YAMLError, file: str, text: str) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError):
        return Problem(
            file,
            text.count("\n", 0, exc.position) + 1,
            f"character {chr(exc.character)!r} is not allowed in YAML; remove it",
        )
    if not isinstance(exc, yaml.MarkedYAMLError):
        return Problem(file, None, f"YAML error: {exc}")
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    what = exc.problem or exc.context or "not valid YAML"
    if exc.problem and exc.context:
        context = exc.context
        if exc.context_mark is not None and exc.context_mark.line + 1 != line:
            context += f" at line {exc.context_mark.line + 1}"
        what = f"{what} ({context})"
    if len(what) > 4 * MAX_SHOWN:  # PyYAML quotes names (of aliases, tags) in full
        what = what[: 4 * MAX_SHOWN] + "…"
    hint = "check the indentation and the quoting on this line"
    if "'\\t'" in what:
        hint = "indent with spaces, not tabs"
    elif "alias" in what or "anchor" in what:
        hint = "quote values that start with * or &, e.g. '*ADMIN'"
    elif "mapping values are not allowed" in what:
        hint = "quote values that contain ': ', or check the indentation"
    elif "single document" in what:
        hint = "a file holds one YAML document: remove the second '---'"
    elif "could not determine a constructor" in what:
        hint = "remove the '!' tag; plain values are enough"
    elif "cannot read" in what:
        hint = "quote the value, or remove its '!!' tag"
    elif "levels deep" in what:
        hint = "close the brackets opened above, or flatten the structure"
    elif "merge keys" in what:
        hint = "write the keys out instead of merging them"
    return Problem(file, line, f"YAML syntax error: {what}; {hint}")


def _duplicate_keys(root: yaml.Node, file: str) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    line = key.start_mark.line + 1
                    if key.value in first:
                        problems.append(
                            Problem(
                                file,
                                line,
                                f"duplicate key {_shown(key.value)} "
                                f"(first at line {first[key.value]}); "
                                "YAML would keep only the last one: remove or merge one of them",
                            )
                        )
                    else:
                        first[key.value] = line
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return problems


def _parse_yaml(text: str, file: str) -> tuple[_Doc | None, list[Problem]]:
    try:
        loader = _Loader(text)  # the reader refuses characters YAML forbids (NUL...) here
    except yaml.YAMLError as exc:
        return None, [_yaml_problem(exc, file, text)]
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        return None, [_yaml_problem(exc, file, text)]
    except RecursionError:  # a safety net: MAX_YAML_DEPTH comes first
        return None, [Problem(file, loader.line + 1, "YAML error: nested too deeply")]
    except (ValueError, TypeError, OverflowError) as exc:  # a safety net: not seen so far
        return None, [Problem(file, loader.line + 1, f"YAML error: {exc}; quote the value")]
    finally:
        loader.dispose()
    problems = _duplicate_keys(root, file) if root is not None else []
    return _Doc(file, root, data), problems


@dataclass(frozen=True, slots=True)
class _ReadError:
    message: str
    line: int | None = None  # set when the problem is inside the file (bad encoding)


def _read_text(path: str) -> str | _ReadError:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return _ReadError("not found")
    except IsADirectoryError:
        return _ReadError("is a folder, not a file")
    except PermissionError:
        return _ReadError("cannot be read: permission denied (check its owner and mode)")
    except OSError as exc:
        return _ReadError(f"cannot be read: {exc.strerror or exc}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _ReadError(
            f"is not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8",
            raw.count(b"\n", 0, exc.start) + 1,
        )


def _resolve(base: Path, written: str) -> Path:
    """Absolute paths as written; relative ones against ``base`` (the naming file's folder)."""
    expanded = os.path.expanduser(written)
    if os.path.isabs(expanded):
        return Path(expanded)
    return Path(os.path.abspath(os.path.join(base, expanded)))


def _resolve_glob(base: Path, written: str) -> str:
    expanded = os.path.expanduser(written)
    if os.path.isabs(expanded):
        return expanded
    return os.path.abspath(os.path.join(base, expanded))


# --------------------------------------------------------------------------------------
# pydantic models: the shape of the files


def _v_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _v_none_to_list(value: object) -> object:
    return [] if value is None else value


def _v_one_or_list(value: object) -> object:
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


def _v_none_to_dict(value: object) -> object:
    return {} if value is None else value


def _v_text(value: object) -> object:
    """Free text (comments): a number written without quotes is text too."""
    if value is None or isinstance(value, str | dict | list):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _v_nonempty(value: str) -> str:
    if not value.strip():
        raise ValueError("empty value: write a path")
    return value.strip()


def _v_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "on", "true"):
        return True
    if isinstance(value, str) and value.lower() in ("no", "off", "false"):
        return False
    raise ValueError(f"expected true or false, got {_describe(value)}")


def _v_duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"bad duration {_describe(value)}: {_DURATION_HELP}")
    return parse_duration(value)


def _v_positive_duration(value: object) -> float:
    seconds = _v_duration(value)
    if seconds <= 0:
        raise ValueError(f"bad duration {_shown(value)}: must be more than zero; {_DURATION_HELP}")
    return seconds


def _v_network(value: object) -> Network:
    if not isinstance(value, str):
        raise ValueError(
            f"bad network {_describe(value)}: write a CIDR such as 10.0.0.0/8 or an address"
        )
    return network_from_text(value)


def _v_listen(value: object) -> HostPort:
    return parse_host_port(value, what="listen address", allow_port_zero=True)


def _v_upstream(value: object) -> HostPort:
    return parse_host_port(value, what="upstream")


def _v_ip_address(value: object) -> str:
    try:
        if not isinstance(value, str):
            raise ValueError
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(
            f"bad address {_describe(value)}: write the IP address clients should connect to, "
            "e.g. 203.0.113.10"
        ) from None


def _v_port_range(value: object) -> tuple[int, int]:
    help_ = 'write "first-last" with ports from 1024 to 65535, e.g. "50000-50099"'
    m = (
        re.fullmatch(r"\s*([0-9]{1,5})\s*-\s*([0-9]{1,5})\s*", value)
        if isinstance(value, str)
        else None
    )
    if m is None:
        raise ValueError(f"bad port range {_describe(value)}: {help_}")
    lo, hi = int(m[1]), int(m[2])
    if not (1024 <= lo <= 65535 and 1024 <= hi <= 65535):
        raise ValueError(f"bad port range {_shown(value)}: {help_}")
    if lo > hi:
        raise ValueError(
            f'bad port range {_shown(value)}: the first port is above the last; write "{hi}-{lo}"'
        )
    return lo, hi


def _v_rate(value: object) -> tuple[int, float]:
    help_ = 'write connections/period, e.g. "30/60s" (at most 30 new connections per minute)'
    # Stripped first: "(\S.*?)\s*" would take quadratic time over a long run of spaces.
    m = re.fullmatch(r"([0-9]+)\s*/\s*(\S.*)", value.strip()) if isinstance(value, str) else None
    if m is None or int(m[1]) < 1:
        raise ValueError(f"bad rate {_describe(value)}: {help_}")
    try:
        period = parse_duration(m[2])
    except ValueError:
        raise ValueError(
            f"bad rate {_shown(value)}: {_shown(m[2])} is not a duration; {help_}"
        ) from None
    if period <= 0:
        raise ValueError(f"bad rate {_shown(value)}: the period must be more than zero; {help_}")
    return int(m[1]), period


_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _v_listener_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"bad listener name {_shown(value)}: use letters, digits, '-' and '_' only (e.g. ftp)"
        )
    return value


def _v_country(value: object) -> str:
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z]{2}", value.strip()):
        return value.strip().upper()
    raise ValueError(
        f"bad country {_describe(value)}: write a two-letter ISO 3166 code such as CN or RU"
    )


def _v_hours(value: object) -> Hours:
    if not isinstance(value, str):
        raise ValueError(f"bad hours {_describe(value)}: write e.g. 'Mon-Fri 07:00-19:00'")
    return Hours.parse(value)


def _v_user(value: object) -> str:
    if isinstance(value, str) and value.strip() and not any(c.isspace() for c in value.strip()):
        return value.strip().upper()
    raise ValueError(
        f"bad user name {_describe(value)}: write a user profile name such as QSECOFR, "
        "* matches any characters (quote names that start with *)"
    )


def _v_verb(value: object) -> str:
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z]{3,4}", value.strip()):
        return value.strip().upper()
    raise ValueError(f"bad FTP command {_describe(value)}: write a verb such as RETR, LIST or STOR")


def _v_rule_item(value: object) -> object:
    """A bare string (or number) in allow/deny is a network."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return {"network": value}
    return value


Duration = Annotated[float, PlainValidator(_v_duration)]
PositiveDuration = Annotated[float, PlainValidator(_v_positive_duration)]
NetworkField = Annotated[Network, PlainValidator(_v_network)]
NetworkList = Annotated[list[NetworkField], BeforeValidator(_v_one_or_list)]
NonEmptyText = Annotated[str, AfterValidator(_v_nonempty)]
Text = Annotated[str | None, BeforeValidator(_v_text)]
Bool = Annotated[bool, PlainValidator(_v_bool)]
ModeField = Annotated[Literal["enforce", "monitor"], BeforeValidator(_v_lower)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _TimeoutsModel(_Model):
    connect: PositiveDuration | None = None
    idle: PositiveDuration | None = None
    drain: Duration | None = None  # 0: stop without waiting
    proxy_header: PositiveDuration | None = None
    login: PositiveDuration | None = None  # FTP listeners only


class _TlsModel(_Model):
    mode: Annotated[Literal["refuse", "terminate"], BeforeValidator(_v_lower)] = "refuse"
    certificate: NonEmptyText | None = None
    key: NonEmptyText | None = None
    upstream: Annotated[Literal["plain", "tls"], BeforeValidator(_v_lower)] = "plain"
    upstream_ca: NonEmptyText | None = None


def _v_tls(value: object) -> object:
    if isinstance(value, str):
        if value.strip().lower() == "refuse":
            return {"mode": "refuse"}
        raise ValueError(
            f"bad tls {_shown(value)}: write tls: refuse, or "
            "tls: {mode: terminate, certificate: FILE, key: FILE, upstream: plain}"
        )
    return value


class _LimitsModel(_Model):
    per_address: Annotated[int, Field(ge=1)] | None = None
    rate: Annotated[tuple[int, float], PlainValidator(_v_rate)] | None = None


class _ListenerModel(_Model):
    name: Annotated[str, AfterValidator(_v_listener_name)]
    protocol: Annotated[Literal["ftp", "telnet", "tcp"], BeforeValidator(_v_lower)]
    listen: Annotated[HostPort, PlainValidator(_v_listen)]
    upstream: Annotated[HostPort, PlainValidator(_v_upstream)]
    reject: Annotated[Literal["reply", "close", "reset"], BeforeValidator(_v_lower)] | None = None
    proxy_protocol: NetworkList = []
    passive_ports: Annotated[tuple[int, int], PlainValidator(_v_port_range)] | None = None
    passive_address: Annotated[str, PlainValidator(_v_ip_address)] | None = None
    tls: Annotated[_TlsModel | None, BeforeValidator(_v_tls)] = None
    limits: _LimitsModel | None = None
    timeouts: _TimeoutsModel | None = None
    mode: ModeField | None = None
    enforce_on_reload: Bool = False
    allow_foreign_data: Bool = False


def _v_web_user(value: object) -> str:
    # HTTP Basic sends "user:password": a colon would end the name early.
    text = value.strip() if isinstance(value, str) else ""
    if text and text.isprintable() and ":" not in text:
        return text
    raise ValueError(
        f"bad user {_describe(value)}: write the name to sign on to the report pages with "
        "(no colon, no control character)"
    )


def _v_password_hash(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"bad password_hash {_describe(value)}: write the line that "
            "'gatekeeper web --hash-password' prints, in quotes"
        )
    parse_password_hash(value)  # ValueError says what is wrong
    return value.strip()


class _WebModel(_Model):
    listen: Annotated[HostPort, PlainValidator(_v_listen)] = HostPort("127.0.0.1", 8020)
    # HTTP Basic credentials for the report pages (needed when listen is not loopback).
    user: Annotated[str, PlainValidator(_v_web_user)] | None = None
    password_hash: Annotated[str, PlainValidator(_v_password_hash)] | None = None


def _v_metrics_listen(value: object) -> HostPort:
    return parse_host_port(value, what="metrics listen address")


class _MetricsModel(_Model):
    # Where /metrics is served (Prometheus text format); no metrics section: not served.
    listen: Annotated[HostPort, PlainValidator(_v_metrics_listen)]


class _GeoipModel(_Model):
    city: NonEmptyText | None = None
    asn: NonEmptyText | None = None


def _v_syslog_target(value: object) -> tuple[str, HostPort]:
    example = 'write e.g. "udp://10.0.0.5:514" or "tcp://siem.example.com:601"'
    text = value.strip() if isinstance(value, str) else ""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("udp", "tcp"):
        raise ValueError(f"bad syslog target {_describe(value)}: {example}")
    return scheme.lower(), parse_host_port(rest, what="syslog target")


def _v_syslog_facility(value: object) -> int:
    text = value.strip().lower() if isinstance(value, str) else ""
    if text in SYSLOG_FACILITIES:
        return SYSLOG_FACILITIES[text]
    raise ValueError(
        f"bad syslog facility {_describe(value)}: write one of {', '.join(SYSLOG_FACILITIES)}"
    )


def _v_syslog_name(limit: int) -> Callable[[object], str]:
    """RFC 5424 APP-NAME / HOSTNAME: 1 to ``limit`` printable US-ASCII characters, no space."""

    def check(value: object) -> str:
        text = value.strip() if isinstance(value, str) else ""
        if 0 < len(text) <= limit and all(33 <= ord(c) <= 126 for c in text):
            return text
        raise ValueError(
            f"bad name {_describe(value)}: write 1 to {limit} printable ASCII characters "
            "without spaces (RFC 5424)"
        )

    return check


class _SyslogModel(_Model):
    target: Annotated[tuple[str, HostPort], PlainValidator(_v_syslog_target)]
    facility: Annotated[int, PlainValidator(_v_syslog_facility)] = SYSLOG_FACILITIES["authpriv"]
    app_name: Annotated[str, PlainValidator(_v_syslog_name(48))] = "gatekeeper"
    hostname: Annotated[str, PlainValidator(_v_syslog_name(255))] | None = None


class _ConfigModel(_Model):
    database: NonEmptyText
    geoip: _GeoipModel | None = None
    rules: Annotated[list[NonEmptyText], BeforeValidator(_v_one_or_list)] = [DEFAULT_RULES]
    web: _WebModel | None = None
    metrics: _MetricsModel | None = None
    status_file: NonEmptyText | None = None  # default: the database path + ".status.json"
    listeners: Annotated[list[_ListenerModel], Field(min_length=1)]
    timeouts: _TimeoutsModel | None = None
    retention: PositiveDuration = 400 * 86400.0
    mode: ModeField = "enforce"
    syslog: _SyslogModel | None = None  # forward rejections and bans to a SIEM


class _RuleItemModel(_Model):
    network: NetworkField | None = None
    file: NonEmptyText | None = None
    country: Annotated[
        list[Annotated[str, PlainValidator(_v_country)]] | None, BeforeValidator(_v_one_or_list)
    ] = None
    listeners: Annotated[list[str] | None, BeforeValidator(_v_one_or_list)] = None
    hours: Annotated[Hours, PlainValidator(_v_hours)] | None = None
    comment: Text = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        kinds = [k for k in ("network", "file", "country") if getattr(self, k) is not None]
        if len(kinds) != 1:
            found = f" (found: {', '.join(kinds)})" if kinds else ""
            raise ValueError(
                f"a rule needs exactly one of network, file, country{found}; "
                "write one rule per line"
            )
        if self.country == []:
            raise ValueError("country: write at least one country code, e.g. [CN, RU]")
        if self.listeners == []:
            raise ValueError(
                "listeners: [] matches no listener; name some, or remove the key to apply "
                "the rule to every listener"
            )
        return self


RuleItem = Annotated[_RuleItemModel, BeforeValidator(_v_rule_item)]


class _UserModel(_Model):
    commands: Annotated[
        list[Annotated[str, PlainValidator(_v_verb)]], BeforeValidator(_v_one_or_list)
    ]


class _BanModel(_Model):
    after: Annotated[int, Field(ge=1)] | None = None
    within: PositiveDuration | None = None
    for_: PositiveDuration | None = Field(default=None, alias="for")
    ipv6_prefix: Annotated[int, Field(ge=1, le=128)] | None = None


class _FtpModel(_Model):
    deny_users: Annotated[
        list[Annotated[str, PlainValidator(_v_user)]], BeforeValidator(_v_one_or_list)
    ] = []
    users: Annotated[
        dict[Annotated[str, PlainValidator(_v_user)], _UserModel], BeforeValidator(_v_none_to_dict)
    ] = {}
    ban: _BanModel | None = None


class _RuleFileModel(_Model):
    default: Annotated[Literal["allow", "deny"], BeforeValidator(_v_lower)] | None = None
    allow: Annotated[list[RuleItem], BeforeValidator(_v_none_to_list)] = []
    deny: Annotated[list[RuleItem], BeforeValidator(_v_none_to_list)] = []
    privileged: NetworkList = []
    ftp: _FtpModel | None = None


# --------------------------------------------------------------------------------------
# pydantic errors → problems an administrator can act on

_KINDS = {
    "string_type": "text",
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
}
_MISSING_HINTS = {
    "database": "write e.g. database: /var/lib/gatekeeper/gatekeeper.db",
    "listeners": "list at least one listener (name, protocol, listen, upstream)",
    "name": "give the listener a name, e.g. name: ftp",
    "protocol": "write protocol: ftp, telnet or tcp",
    "listen": 'write e.g. listen: "0.0.0.0:21"',
    "upstream": 'write the IBM i\'s address, e.g. upstream: "ibmi.example.com:21"',
    "commands": "list the FTP commands this user may send, e.g. commands: [RETR, LIST]",
}


def _describe(value: object) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return _shown(value)


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is not None and type(None) in get_args(tp):  # X | None
            rest = [a for a in get_args(tp) if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else tp
            if len(rest) != 1:
                return tp
        else:
            return tp


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The pydantic model that validated the mapping at ``loc`` (for 'expected one of')."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {f.alias or name: f for name, f in tp.model_fields.items()}
            if part not in fields:
                return None
            tp = fields[str(part)].annotation
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict and isinstance(part, str):
            tp = get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _error_message(err: Any, model: type[BaseModel]) -> str:
    kind: str = err["type"]
    loc: Loc = tuple(err["loc"])
    keys = [p for p in loc if isinstance(p, str)]
    key = keys[-1] if keys else None
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        expected = _keys_of(parent) if parent is not None else []
        message = f"unknown key {_shown(loc[-1])}"
        if expected:
            message += f" (expected one of: {', '.join(expected)})"
            close = difflib.get_close_matches(str(loc[-1]), expected, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        return message
    if kind == "missing":
        hint = _MISSING_HINTS.get(str(key))
        return f"missing key {key!r}" + (f": {hint}" if hint else "")
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        message = str(ctx["error"])
        # "idle: bad duration '1x': ..."; not "network: bad network ..."
        return message if key is None or key in message else f"{key}: {message}"
    if kind == "literal_error":
        return f"bad {key} {_describe(value)} (expected {ctx.get('expected', '')})"
    if kind in _KINDS:
        if key is None:
            target = _model_at(model, loc)
            keys_hint = f" with keys: {', '.join(_keys_of(target))}" if target else ""
            return f"the file must be a YAML mapping{keys_hint}; got {_describe(value)}"
        hint = ""
        if kind == "int_type" and isinstance(value, str) and value.strip().isdigit():
            hint = " (write the number without quotes)"
        return f"{key}: expected {_KINDS[kind]}, got {_describe(value)}{hint}"
    if kind == "too_short":
        return f"{key}: is empty; list at least {ctx.get('min_length', 1)} item"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bound = {
            "greater_than_equal": f"at least {ctx.get('ge')}",
            "less_than_equal": f"at most {ctx.get('le')}",
            "greater_than": f"more than {ctx.get('gt')}",
            "less_than": f"less than {ctx.get('lt')}",
        }[kind]
        return f"{key}: must be {bound}, got {_describe(value)}"
    return f"{key}: {err['msg']}" if key else str(err["msg"])


_M = TypeVar("_M", bound=BaseModel)


def _validate(
    model: type[_M],
    doc: _Doc,
    prefix: Callable[[Loc], str] | None = None,
) -> tuple[_M | None, list[Problem]]:
    data = {} if doc.data is None else doc.data
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc: Loc = tuple(err["loc"])
            message = _error_message(err, model)
            if prefix is not None:
                message = prefix(loc) + message
            problems.append(Problem(doc.file, doc.line(loc), message))
        return None, problems


def _ordered(problems: Iterable[Problem]) -> list[Problem]:
    """Group by file (in order of first appearance), by line within a file."""
    order: dict[str, int] = {}
    for p in problems:
        order.setdefault(p.file, len(order))
    return sorted(problems, key=lambda p: (order[p.file], p.line or 0))


# --------------------------------------------------------------------------------------
# gatekeeper.yaml → Settings


@dataclass(slots=True)
class _RulesContext:
    """What reading the rule files needs from the config file."""

    config_file: str  # as shown in problems
    globs: list[tuple[str, str, int | None]]  # (as written, resolved, line in the config)
    rules_line: int | None  # the 'rules:' line; None when not written (the default)
    listeners: tuple[str, ...] | None  # defined listener names; None: unknown, not checked
    geoip: bool | None  # is a GeoIP city database configured? None: unknown

    @property
    def config_name(self) -> str:
        return Path(self.config_file).name


def _timeouts(base: Timeouts, model: _TimeoutsModel | None) -> Timeouts:
    if model is None:
        return base
    changes = {k: v for k, v in model.model_dump().items() if v is not None}
    return dataclasses.replace(base, **changes)


def _clash(a: HostPort, b: HostPort) -> bool:
    """Would binding both fail? Same address and port, or a wildcard covering the other."""
    if a.port != b.port or a.port == 0:
        return False
    if a.host == b.host:
        return True
    try:
        ia, ib = ipaddress.ip_address(a.host), ipaddress.ip_address(b.host)
    except ValueError:
        return False

    def covers(
        w: ipaddress.IPv4Address | ipaddress.IPv6Address,
        o: ipaddress.IPv4Address | ipaddress.IPv6Address,
    ) -> bool:
        # [::] accepts IPv4 clients too (PRODUCT.md), so it covers every address.
        return w.is_unspecified and (w.version == 6 or o.version == 4)

    return covers(ia, ib) or covers(ib, ia)


def _build_settings(cfg: _ConfigModel, doc: _Doc, path: Path) -> tuple[Settings, list[Problem]]:
    base = path.parent
    problems: list[Problem] = []

    def problem(loc: Loc, message: str) -> None:
        problems.append(Problem(doc.file, doc.line(loc), message))

    timeouts = _timeouts(Timeouts(), cfg.timeouts)
    mode = Mode(cfg.mode)
    listeners: list[ListenerSettings] = []
    names: dict[str, int] = {}
    listens: list[tuple[HostPort, str, int]] = []
    for i, lm in enumerate(cfg.listeners):
        loc: Loc = ("listeners", i)
        line = doc.line(loc)
        who = f"listener {lm.name!r}: "
        protocol = Protocol(lm.protocol)
        is_ftp = protocol is Protocol.FTP
        if lm.name in names:
            problem(
                (*loc, "name"),
                f"{who}the name is already used by the listener at line {names[lm.name]}; "
                "give each listener its own name",
            )
        else:
            names[lm.name] = line
        for other, other_name, other_line in listens:
            if _clash(lm.listen, other):
                problem(
                    (*loc, "listen"),
                    f"{who}listen {lm.listen} clashes with listener {other_name!r} on {other} "
                    f"(line {other_line}); give each listener its own address or port",
                )
                break
        listens.append((lm.listen, lm.name, line))
        if lm.reject == "reply" and not is_ftp:
            problem(
                (*loc, "reject"),
                f"{who}reject: reply sends an FTP reply and is for ftp listeners only; "
                "write reject: close or reject: reset",
            )
        if not is_ftp:
            for key in ("passive_ports", "passive_address", "tls", "allow_foreign_data"):
                if key in lm.model_fields_set and getattr(lm, key) is not None:
                    problem(
                        (*loc, key),
                        f"{who}{key} applies to ftp listeners only; remove it "
                        f"(a {protocol} listener relays bytes untouched)",
                    )
            if lm.timeouts is not None and lm.timeouts.login is not None:
                problem(
                    (*loc, "timeouts", "login"),
                    f"{who}timeouts.login applies to ftp listeners only (the time to sign "
                    f"on); remove it: a {protocol} listener has only timeouts.idle",
                )
        tls = TlsSettings()
        if lm.tls is not None:
            t = lm.tls
            missing = [k for k in ("certificate", "key") if getattr(t, k) is None]
            if t.mode == "terminate" and missing:
                problem(
                    (*loc, "tls"),
                    f"{who}tls mode terminate needs {' and '.join(missing)}: "
                    "the paths of the PEM certificate and of its private key",
                )
            tls = TlsSettings(
                mode=t.mode,
                certificate=_resolve(base, t.certificate) if t.certificate else None,
                key=_resolve(base, t.key) if t.key else None,
                upstream=t.upstream,
                upstream_ca=_resolve(base, t.upstream_ca) if t.upstream_ca else None,
            )
        if lm.reject is not None:
            reject = RejectStyle(lm.reject)
        else:
            reject = RejectStyle.REPLY if is_ftp else RejectStyle.CLOSE
        limits = Limits()
        if lm.limits is not None:
            limits = Limits(per_address=lm.limits.per_address, rate=lm.limits.rate)
        listeners.append(
            ListenerSettings(
                name=lm.name,
                protocol=protocol,
                listen=lm.listen,
                upstream=lm.upstream,
                reject=reject,
                source=Source(doc.file, line),
                mode=Mode(lm.mode) if lm.mode is not None else mode,
                proxy_protocol=tuple(lm.proxy_protocol),
                passive_ports=lm.passive_ports,
                passive_address=lm.passive_address,
                tls=tls,
                limits=limits,
                timeouts=_timeouts(timeouts, lm.timeouts),
                enforce_on_reload=lm.enforce_on_reload,
                allow_foreign_data=lm.allow_foreign_data,
            )
        )
    for i, ls in enumerate(listeners):
        if any(ls.upstream == other.listen for other in listeners):
            problem(
                ("listeners", i, "upstream"),
                f"listener {ls.name!r}: upstream {ls.upstream} is gatekeeper's own listen "
                "address, connections would loop; point it at the IBM i",
            )
    metrics_listen = cfg.metrics.listen if cfg.metrics is not None else None
    if metrics_listen is not None:
        taken = [(x.listen, f"listener {x.name!r}") for x in listeners]
        if cfg.web is not None:
            taken.append((cfg.web.listen, "web.listen"))
        for other, what in taken:
            if _clash(metrics_listen, other):
                problem(
                    ("metrics", "listen"),
                    f"metrics listen {metrics_listen} clashes with {what} on {other}; "
                    'give metrics its own port, e.g. listen: "127.0.0.1:9120"',
                )
                break
    database = _resolve(base, cfg.database)
    geoip = None
    if cfg.geoip is not None:
        geoip = GeoipSettings(
            city=_resolve(base, cfg.geoip.city) if cfg.geoip.city else None,
            asn=_resolve(base, cfg.geoip.asn) if cfg.geoip.asn else None,
        )
    settings = Settings(
        path=path,
        database=database,
        rule_globs=tuple(_resolve_glob(base, g) for g in cfg.rules),
        listeners=tuple(listeners),
        geoip=geoip,
        web_listen=cfg.web.listen if cfg.web is not None else HostPort("127.0.0.1", 8020),
        web_auth=_web_auth(cfg.web, problem),
        timeouts=timeouts,
        retention=cfg.retention,
        mode=mode,
        metrics_listen=metrics_listen,
        status_file=(
            _resolve(base, cfg.status_file)
            if cfg.status_file is not None
            else database.with_name(database.name + ".status.json")
        ),
        syslog=_syslog(cfg.syslog),
    )
    return settings, problems


def _syslog(model: _SyslogModel | None) -> SyslogSettings | None:
    if model is None:
        return None
    transport, where = model.target
    return SyslogSettings(
        transport=transport,
        host=where.host,
        port=where.port,
        facility=model.facility,
        app_name=model.app_name,
        hostname=model.hostname,
    )


def _geoip_problems(settings: Settings, doc: _Doc) -> list[Problem]:
    """GeoIP databases that cannot be used: errors for ``gatekeeper check``, while the
    daemon only warns and runs with locations unknown (see ``gatekeeper.geo``)."""
    if settings.geoip is None:
        return []
    from gatekeeper import geo  # geoip2 is loaded only when a database is checked

    return [
        Problem(doc.file, doc.line(("geoip", kind)), f"geoip.{kind}: {message}")
        for kind, message in geo.database_problems(settings.geoip)
    ]


def _web_auth(web: _WebModel | None, problem: Callable[[Loc, str], None]) -> WebAuth | None:
    """``web: {user, password_hash}``: both or neither."""
    if web is None or (web.user is None and web.password_hash is None):
        return None
    if web.user is None or web.password_hash is None:
        given, missing = ("user", "password_hash") if web.password_hash is None else (
            "password_hash", "user")  # fmt: skip
        problem(
            ("web", given),
            f"web: {given} without {missing}; write both (the hash comes from "
            "'gatekeeper web --hash-password'), or neither for no login on a loopback address",
        )
        return None
    return WebAuth(web.user, parse_password_hash(web.password_hash))


def _written_globs(doc: _Doc) -> tuple[list[tuple[str, int | None]], int | None] | None:
    """The ``rules:`` entries as written with their lines, or None if they are unusable."""
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        return None
    if "rules" not in data:
        return [(DEFAULT_RULES, None)], None
    raw = data["rules"]
    entries = [raw] if isinstance(raw, str) else raw
    if not isinstance(entries, list) or not all(isinstance(g, str) and g.strip() for g in entries):
        return None
    return [(g.strip(), doc.line(("rules", i))) for i, g in enumerate(entries)], doc.line(
        ("rules",)
    )


def _raw_listener_names(doc: _Doc) -> tuple[str, ...] | None:
    data = doc.data
    raw = data.get("listeners") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        return None
    names = (item.get("name") for item in raw if isinstance(item, dict))
    return tuple(dict.fromkeys(name for name in names if isinstance(name, str)))


def _load_config(
    path: str | Path, *, check_geoip: bool = False
) -> tuple[Settings | None, list[Problem], _RulesContext | None]:
    shown = str(path)
    absolute = Path(os.path.abspath(os.path.expanduser(path)))
    text = _read_text(str(absolute))
    if isinstance(text, _ReadError):
        hint = "; pass -c PATH or set GATEKEEPER_CONFIG" if text.message == "not found" else ""
        return None, [Problem(shown, text.line, f"config file {text.message}{hint}")], None
    doc, problems = _parse_yaml(text, shown)
    if doc is None:
        return None, problems, None

    def prefix(loc: Loc) -> str:
        # "listener 'ftp': ..." for problems inside a listener that has a readable name
        if len(loc) > 2 and loc[0] == "listeners" and isinstance(loc[1], int):
            item = doc.data["listeners"][loc[1]] if isinstance(doc.data, dict) else None
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                return f"listener {_shown(item['name'])}: "
        return ""

    cfg, found = _validate(_ConfigModel, doc, prefix=prefix)
    problems += found
    settings = None
    if cfg is not None:
        settings, found = _build_settings(cfg, doc, absolute)
        problems += found
        if check_geoip:
            problems += _geoip_problems(settings, doc)

    context = None
    written = _written_globs(doc)
    if written is not None:
        entries, rules_line = written
        context = _RulesContext(
            config_file=shown,
            globs=[(g, _resolve_glob(absolute.parent, g), line) for g, line in entries],
            rules_line=rules_line,
            listeners=(
                tuple(dict.fromkeys(x.name for x in settings.listeners))
                if settings is not None
                else _raw_listener_names(doc)
            ),
            geoip=(
                settings.geoip is not None and settings.geoip.city is not None
                if settings is not None
                else None
            ),
        )
    if problems:
        settings = None
    return settings, problems, context


def _context_from_settings(settings: Settings) -> _RulesContext:
    """Rebuild what the config said about rules; re-read the file for line numbers."""
    shown = str(settings.path)
    globs: list[tuple[str, str, int | None]] = [(g, g, None) for g in settings.rule_globs]
    rules_line = None
    text = _read_text(shown)
    if isinstance(text, str):
        doc, _ = _parse_yaml(text, shown)
        written = _written_globs(doc) if doc is not None else None
        if written is not None:
            again = [(g, _resolve_glob(settings.path.parent, g), n) for g, n in written[0]]
            if tuple(r for _, r, _ in again) == settings.rule_globs:
                globs, rules_line = again, written[1]
    return _RulesContext(
        config_file=shown,
        globs=globs,
        rules_line=rules_line,
        listeners=tuple(x.name for x in settings.listeners),
        geoip=settings.geoip is not None and settings.geoip.city is not None,
    )


# --------------------------------------------------------------------------------------
# rule files → RulesSpec


@dataclass(slots=True)
class _Merged:
    """All rule files read so far, merged: lists are the union, scalars are set once."""

    rules: list[Rule | ListedRules] = field(default_factory=list)
    privileged: dict[Network, None] = field(default_factory=dict)  # ordered set
    deny_users: dict[str, None] = field(default_factory=dict)
    users: dict[str, dict[str, None]] = field(default_factory=dict)
    scalars: dict[str, tuple[Any, Source]] = field(default_factory=dict)
    ban: bool = False
    files: dict[str, None] = field(default_factory=dict)
    lists: dict[str, tuple[ListedNetworks, ListedNetworks]] = field(default_factory=dict)

    def set_scalar(self, name: str, value: Any, source: Source) -> Problem | None:
        previous = self.scalars.get(name)
        if previous is not None:
            return Problem(
                source.file,
                source.line,
                f"{name!r} is already set in {previous[1]}; set it in one rule file only "
                "(lists are merged across rule files, single values are not)",
            )
        self.scalars[name] = (value, source)
        return None

    def spec(self) -> RulesSpec:
        default = self.scalars.get("default")
        ban = None
        if self.ban:
            ban = BanPolicy(
                **{
                    attr: self.scalars[f"ftp.ban.{key}"][0]
                    for attr, key in (
                        ("after", "after"),
                        ("within", "within"),
                        ("duration", "for"),
                        ("ipv6_prefix", "ipv6_prefix"),
                    )
                    if f"ftp.ban.{key}" in self.scalars
                }
            )
        return RulesSpec(
            default=Action(default[0]) if default else Action.DENY,
            default_source=default[1] if default else None,
            rules=tuple(self.rules),
            privileged=tuple(self.privileged),
            ftp=FtpPolicy(
                deny_users=tuple(self.deny_users),
                users={u: UserPolicy(frozenset(c)) for u, c in self.users.items()},
                ban=ban,
            ),
            files=tuple(self.files),
        )


def _network_list(
    merged: _Merged, path: Path, referrer: Source
) -> tuple[tuple[ListedNetworks, ListedNetworks] | None, list[Problem]]:
    """Read a network list once per load; problems point into it (or at the referrer).
    Returns its IPv4 and IPv6 networks, or None if it cannot be read."""
    key = str(path)
    if key in merged.lists:
        return merged.lists[key], []
    text = _read_text(key)
    if isinstance(text, _ReadError):
        if text.line is not None:
            return None, [Problem(key, text.line, f"network list {text.message}")]
        hint = (
            "; create it (it may be empty) or fix the path" if text.message == "not found" else ""
        )
        return None, [
            Problem(
                referrer.file,
                referrer.line,
                f"network list {_cut(key, PATH_SHOWN)} {text.message}{hint}",
            )
        ]
    merged.files[key] = None
    v4, v6, problems = _parse_network_lines(text, key)
    if len(problems) > MAX_PROBLEMS_PER_LIST:
        more = len(problems) - MAX_PROBLEMS_PER_LIST
        first_hidden = problems[MAX_PROBLEMS_PER_LIST]
        problems = [
            *problems[:MAX_PROBLEMS_PER_LIST],
            Problem(
                key,
                first_hidden.line,
                f"... and {more} more bad lines from here on (only the first "
                f"{MAX_PROBLEMS_PER_LIST} are shown); is this a network list?",
            ),
        ]
    merged.lists[key] = (v4, v6)
    return (v4, v6), problems


def _load_rule_file(path: str, ctx: _RulesContext, merged: _Merged) -> list[Problem]:
    text = _read_text(path)
    if isinstance(text, _ReadError):
        return [Problem(path, text.line, f"rule file {text.message}")]
    merged.files[path] = None
    doc, problems = _parse_yaml(text, path)
    if doc is None:
        return problems
    model, found = _validate(_RuleFileModel, doc)
    problems += found
    if model is None:
        return problems

    def add(problem: Problem | None) -> None:
        if problem is not None:
            problems.append(problem)

    base = Path(path).parent
    if model.default is not None:
        add(merged.set_scalar("default", model.default, Source(path, doc.line(("default",)))))

    entries: list[tuple[int, int, list[Rule | ListedRules]]] = []
    for action in (Action.ALLOW, Action.DENY):
        items: list[_RuleItemModel] = getattr(model, action.value)
        for i, item in enumerate(items):
            loc: Loc = (action.value, i)
            source = Source(path, doc.line(loc))
            listeners = frozenset(item.listeners) if item.listeners is not None else None
            for j, name in enumerate(item.listeners or ()):
                if ctx.listeners is not None and name not in ctx.listeners:
                    problems.append(
                        Problem(
                            path,
                            doc.line((*loc, "listeners", j)),
                            f"listener {_shown(name)} in 'listeners:' is not defined in "
                            f"{ctx.config_name} (defined: "
                            f"{', '.join(map(_cut, ctx.listeners)) or 'none'})",
                        )
                    )
            make = partial(
                Rule, action, listeners=listeners, hours=item.hours, comment=item.comment
            )
            rules: list[Rule | ListedRules]
            if item.network is not None:
                rules = [make(source, network=item.network)]
            elif item.country is not None:
                if ctx.geoip is False:
                    problems.append(
                        Problem(
                            path,
                            source.line,
                            "country rules need a GeoIP database: add "
                            "geoip: {city: /var/lib/GeoIP/GeoLite2-City.mmdb} "
                            f"to {ctx.config_name}",
                        )
                    )
                rules = [make(source, countries=frozenset(item.country))]
            else:
                assert item.file is not None
                list_path = _resolve(base, item.file)
                listed, found = _network_list(
                    merged, list_path, Source(path, doc.line((*loc, "file")))
                )
                problems += found
                # One rule per listed network, found at its line in the list file (made
                # when asked for: see ListedRules).
                if listed is None:
                    rules = []
                else:
                    rules = [ListedRules(make(source), str(list_path), *listed)]
            entries.append((source.line, len(entries), rules))
    for _, _, rules in sorted(entries, key=lambda e: (e[0], e[1])):
        merged.rules.extend(rules)

    for network in model.privileged:
        merged.privileged[network] = None
    if model.ftp is not None:
        for user in model.ftp.deny_users:
            merged.deny_users[user] = None
        for user, policy in model.ftp.users.items():
            commands = merged.users.setdefault(user, {})
            for verb in policy.commands:
                commands[verb] = None
        if model.ftp.ban is not None:
            merged.ban = True
            for key, value in model.ftp.ban.model_dump(by_alias=True).items():
                if value is not None:
                    where = Source(path, doc.line(("ftp", "ban", key)))
                    add(merged.set_scalar(f"ftp.ban.{key}", value, where))
    return problems


def _load_rules(ctx: _RulesContext) -> tuple[RulesSpec | None, list[Problem]]:
    problems: list[Problem] = []
    paths: dict[str, None] = {}  # ordered set: a file matched by two globs is read once
    named_missing = False
    for written, pattern, line in ctx.globs:
        if any(c in pattern for c in "*?["):
            matches = sorted(p for p in glob(pattern, recursive=True) if os.path.isfile(p))
        elif os.path.isdir(pattern):
            named_missing = True
            problems.append(
                Problem(
                    ctx.config_file,
                    line,
                    f"rules: {_shown(written, PATH_SHOWN)} is a folder; write "
                    f"{_cut(written.rstrip('/'), PATH_SHOWN)}/*.yaml to read the rule files in it",
                )
            )
            continue
        elif not os.path.exists(pattern):
            named_missing = True
            problems.append(
                Problem(
                    ctx.config_file,
                    line,
                    f"rule file {_cut(pattern, PATH_SHOWN)} not found "
                    f"(rules: {_shown(written, PATH_SHOWN)}); create it or fix the path",
                )
            )
            continue
        else:
            matches = [pattern]
        for match in matches:
            paths[match] = None
    if not paths and not named_missing:
        listed = ", ".join(_cut(written, PATH_SHOWN) for written, _, _ in ctx.globs)
        problems.append(
            Problem(
                ctx.config_file,
                ctx.rules_line,
                f"no rule file matches rules: [{listed}]; "
                "write at least one with a 'default:' line",
            )
        )
    merged = _Merged()
    with gc_paused():
        for path in paths:
            problems += _load_rule_file(path, ctx, merged)
    if problems:
        return None, _ordered(problems)
    return merged.spec(), []


# --------------------------------------------------------------------------------------
# public API


def load_settings(path: str | Path) -> Settings:
    """Read and validate ``gatekeeper.yaml``; raise ConfigError with every problem found."""
    settings, problems, _ = _load_config(path)
    if problems or settings is None:
        raise ConfigError(_ordered(problems))
    return settings


def load_rules(settings: Settings) -> RulesSpec:
    """Read every rule file ``settings.rule_globs`` matches; raise ConfigError with all problems."""
    spec, problems = _load_rules(_context_from_settings(settings))
    if problems or spec is None:
        raise ConfigError(problems)
    return spec


def _tls_problems(settings: Settings) -> list[Problem]:
    """Certificates and keys named by ``tls: terminate`` must load."""
    found = []
    for listener in settings.listeners:
        try:
            tls.client_context(listener)
            tls.upstream_context(listener)
        except GatekeeperError as exc:
            source = listener.source
            found.append(Problem(source.file, source.line, str(exc).split(": ", 1)[1]))
    return found


def load(path: str | Path, *, check_geoip: bool = False) -> tuple[Settings, RulesSpec]:
    """Both the config and the rule files; problems of both kinds in one ConfigError.

    The rule files are checked even when the config file has problems elsewhere, so
    ``gatekeeper check`` shows everything at once. ``check_geoip`` (``gatekeeper check``)
    makes a GeoIP database that is missing, unreadable or of the wrong type a problem
    too; the daemon does not ask for it: it warns and runs with locations unknown.
    """
    settings, problems, context = _load_config(path, check_geoip=check_geoip)
    spec = None
    if context is not None:
        spec, found = _load_rules(context)
        problems = [*problems, *found]
    if settings is not None:
        problems = [*problems, *_tls_problems(settings)]
    if problems or settings is None or spec is None:
        raise ConfigError(_ordered(problems))
    return settings, spec
