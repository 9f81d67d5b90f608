"""The one error hierarchy. Only the CLI turns these into exit codes."""

from __future__ import annotations

from dataclasses import dataclass


class GatekeeperError(Exception):
    """Root of every error gatekeeper raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a file, printed as ``file:line: message``."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"


class ConfigError(GatekeeperError):
    """A configuration or rule file is wrong; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem] | Problem) -> None:
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ProtocolError(GatekeeperError):
    """The peer misbehaved (malformed PROXY header, garbage FTP); ``reply`` is what to send."""

    def __init__(self, message: str, reply: bytes | None = None) -> None:
        super().__init__(message)
        self.reply = reply
