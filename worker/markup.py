"""Outside text (the model's, the request's) as Markdown that shows the text and builds no structure."""

import re

# Characters that open inline structure (emphasis, code, links, HTML, entities, tables, headings).
INLINE_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~&])")
ESCAPED = str.maketrans({char: "\\" + char for char in "\\`*_[]<>#|~&"})  # INLINE_SPECIAL.sub(r"\\\1", ...) as a table
# Our citation marks [1] and [1, 2] are shown as written; only they keep their brackets.
KEPT_MARK = re.compile(r"\\\[(\d{1,3}(?:,\s?\d{1,3})*)\\\]")
# Invisible characters that reorder or hide text: bidi overrides and isolates, zero-width, C0/C1 controls.
HIDDEN = re.compile(
    r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]"
)
# What makes a line a block of its own at its start (after the escapes above): a bullet, a setext
# underline or a rule, or an ordered-list number.
BULLET = re.compile(r"^([-+=])")
ORDERED = re.compile(r"^(\d{1,9})([.)])(?=\s|$)")
MARK_BEFORE_PAREN = re.compile(r"(\[\d[\d, ]*\])\(")
SAFE_URL = re.compile(r"https?://[^\s<>\"'\[\]`|]+")


def clean(text: object) -> str:
    """Text without hidden characters; tabs and carriage returns as plain spaces and newlines."""
    plain = "" if text is None else str(text)
    if plain.isprintable():  # no control or format character at all, so nothing hidden, no tab, no newline
        return plain
    return HIDDEN.sub("", plain.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " "))


def inline(text: object) -> str:
    """One line of text: whitespace (newlines too) collapsed, every special character escaped."""
    line = " ".join(clean(text).split())
    if not INLINE_SPECIAL.search(line):  # nothing to escape (and so no mark, no "[1](", no "![")
        return line
    escaped = KEPT_MARK.sub(lambda mark: f"[{mark.group(1)}]", line.translate(ESCAPED))
    escaped = MARK_BEFORE_PAREN.sub(r"\1\\(", escaped)  # "[1](x)" stays text, not a link
    return escaped.replace("![", "\\![")


def line(text: object) -> str:
    """One line that may begin a block: like `inline`, and a list or rule marker at its start is escaped."""
    escaped = BULLET.sub(r"\\\1", inline(text))
    if escaped.startswith("["):  # "[1]: x" at a line's start would define a link
        escaped = "\\" + escaped
    return ORDERED.sub(r"\1\\\2", escaped)


def block(text: object) -> list[str]:
    """A text as paragraphs of plain lines: every line escaped, blank lines kept (one at most)."""
    lines: list[str] = []
    for raw in clean(text).split("\n"):
        if raw.strip():
            lines.append(line(raw))
        elif lines and lines[-1]:
            lines.append("")
    while lines and not lines[-1]:
        lines.pop()
    return lines


def cell(value: object) -> str:
    """A table cell: one escaped line ("—" when empty); pipes are escaped by `inline`."""
    shown = inline("" if value is None else value)
    return shown or "—"


def url(text: object) -> str:
    """A URL from our own data shown as written when it is a plain http(s) URL, else as escaped text."""
    value = clean(text).strip()
    return value if SAFE_URL.fullmatch(value) else inline(value)
