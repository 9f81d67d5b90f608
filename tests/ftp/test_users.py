"""``deny_users`` patterns: ``*`` wildcards, matched in linear time."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.ftp.session import denied_user, glob_match
from gatekeeper.rules.model import FtpPolicy


def reference(pattern: str, name: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, name, re.DOTALL) is not None


letters = st.text(alphabet="AB*", max_size=12)


@settings(max_examples=2000, deadline=None)
@given(pattern=letters, name=st.text(alphabet="AB", max_size=14))
def test_glob_match_agrees_with_the_regex(pattern: str, name: str) -> None:
    assert glob_match(pattern, name) is reference(pattern, name)


def test_examples() -> None:
    assert glob_match("QSECOFR", "QSECOFR")
    assert not glob_match("QSECOFR", "QSECOFR2")
    assert glob_match("Q*", "QSYS")
    assert glob_match("*", "")
    assert glob_match("A*A", "AA")
    assert not glob_match("A*A", "A")  # the prefix and the suffix may not overlap
    assert glob_match("*SYS*", "QSYSOPR")


def test_many_stars_over_a_long_name_are_linear() -> None:
    """The pattern a regex backtracks on for ages: found false by a few scans."""
    name = "A" * 4096
    assert not glob_match("*A*A*A*A*A*B", name)
    assert glob_match("*A*A*A*A*A*", name)


def test_denied_user_is_case_insensitive() -> None:
    policy = FtpPolicy(deny_users=("QSECOFR", "Q*"))
    assert denied_user(policy, "qsecofr")
    assert denied_user(policy, "qpgmr")
    assert not denied_user(policy, "ALICE")
    assert not denied_user(FtpPolicy(), "QSECOFR")
