"""Messages for people: git-annex's protocol and DataLad's results show one line each."""

from __future__ import annotations


def one_line(text: object) -> str:
    """`text` with every run of white space (newlines included) folded to one space."""
    return " ".join(str(text).split())
