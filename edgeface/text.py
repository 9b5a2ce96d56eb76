"""Short texts for users: counted words and the first line of an error."""

from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """'1 template', '2 templates', '0 identities' (many: the plural when it is not word + 's')."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def first_line(error: BaseException, *, with_type: bool = False) -> str:
    """The first line of an error's message (a library's multi-line message shortened for a one-line
    report); its type name when it has no message; `with_type`: "Type: line"."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    line = text.splitlines()[0]
    return f"{type(error).__name__}: {line}" if with_type else line
