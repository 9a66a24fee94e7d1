"""Messages for people: git-annex's protocol and DataLad's results show one line each."""

from __future__ import annotations


def one_line(text: object) -> str:
    """`text` with every run of white space (newlines included) folded to one space."""
    return " ".join(str(text).split())


def error_text(exc: BaseException) -> str:
    """One line for an unexpected failure: an OSError in the system's words and with its file
    ("Not a directory: /path"), not Python's "[Errno 20] …" repr; anything else as it says."""
    if isinstance(exc, OSError) and exc.strerror:
        files = [str(name) for name in (exc.filename, exc.filename2) if name]
        return one_line(": ".join([exc.strerror, " -> ".join(files)] if files else [exc.strerror]))
    return one_line(exc) or exc.__class__.__name__
