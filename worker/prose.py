"""What the model's prose may not hold: refusals, links, contact details, HTML, other citation syntaxes."""

import re
from collections.abc import Iterable, Iterator

REFUSALS = (
    # "I'm sorry, but I can't …", "We are afraid we cannot …"
    re.compile(r"\b(?:i|we)\s*(?:am|'m|’m|are|'re|’re)?\s*(?:sorry|afraid),?\s*(?:but\s*)?(?:i|we)\s*"
               r"(?:can(?:no|'|’)?t|can not|(?:am|'m|’m|are)\s+(?:unable|not able)|won(?:'|’)t|will not|must decline)",
               re.I),
    # "I cannot help with", "I am unable to provide", "I must decline to write"
    re.compile(r"\b(?:i|we)\s+(?:can(?:no|'|’)?t|can not|(?:am|'m|’m|are)\s+(?:unable|not able)\s+to|won(?:'|’)t|"
               r"will not|(?:must|have to)\s+decline(?:\s+to)?)\s+(?:help|assist|provide|create|write|generate|"
               r"comply|fulfil|fulfill|answer|offer|give|produce|complete|do\s+(?:that|this))\b", re.I),
    re.compile(r"\bas an ai\b|\bas an? (?:ai |large )?language model\b|\bi(?:'m|’m| am) (?:just |only )?an? ai\b",
               re.I),
    re.compile(r"^\W*(?:i(?:'m|’m| am) sorry|sorry|i apologi[sz]e|unfortunately,? i)\b", re.I),
)
URL = re.compile(r"\b(?:https?|ftps?|file)://|\bwww\d?\.|\b(?:javascript|vbscript|mailto):|\bdata:[a-z]+/[\w.+-]+[;,]"
                 r"|\btel:\s*\+?\d", re.I)
# Domains: a name with a common top-level domain, or any name.tld followed by a path ("bit.ly/x").
TLDS = ("com|org|net|edu|gov|mil|int|info|biz|io|co|ly|ai|app|dev|xyz|online|site|shop|store|health|care|clinic|"
        "example|test|invalid|local|uk|ca|au|de|fr|es|nl|eu|ru|cn|jp|br|ch|se|dk|fi|pl|pt|nz|ie|za|mx|tk|cc|tv|"
        "ws|gg|gl|link|click|top|pro|online|news|club|info|med|pharmacy")
DOMAIN = re.compile(rf"\b(?:[a-z0-9](?:[a-z0-9-]{{0,61}}[a-z0-9])?\.)+(?:{TLDS})\b(?![-.]?\w)"
                    r"|\b[a-z0-9-]+\.[a-z]{2,}/\S", re.I)
# Cheap tests that rule a pattern out before it runs: a domain has a letter or digit, a dot and a letter in a
# row; a phone number a digit, a separator and a digit.
DOMAIN_HINT = re.compile(r"[a-z0-9-]\.[a-z]", re.I)
PHONE_HINT = re.compile(r"\d[\s.-]\d")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PHONE = re.compile(r"(?<![\w.,/])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,5}){1,4}"
                   r"(?![\w/]|[.,]\d)")
DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
# Characters that hide or reorder text: bidi overrides and isolates, C0 and C1 controls (not tab or newline).
HIDDEN = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]")
HTML = re.compile(r"</?[a-z][a-z0-9-]*(?=[\s/>])|<!--|<!\[cdata\[|<\?", re.I)

CITATION = re.compile(r"\[\s*(\d{1,3}(?:\s*,\s*\d{1,3})*)\s*\]")
FOREIGN_CITATIONS = (
    re.compile(r"\[\^[^\]\n]*\]"),  # footnotes [^2]
    re.compile(r"\[[^\]\n]{0,40}?\d[^\]\n]{0,40}?\]"),  # [1-3], [Source 4], [#2], [1;2] (our [n] removed first)
    re.compile(r"[【〔〖][^】〕〗\n]{0,20}[】〕〗]"),  # 【1】
    re.compile(r"\(\s*\d{1,2}(?:\s*,\s*\d{1,2})*\s*\)|\(\s*\d{1,2}\s*[-–]\s*\d{1,2}\s*\)"),  # (1), (1, 2), (1-3)
    re.compile(r"\{\s*\d+\s*\}"),  # {1}
    re.compile(r"(?<![mM])[¹²³⁴⁵⁶⁷⁸⁹⁰]+|[⁽][¹²³⁴⁵⁶⁷⁸⁹⁰]+[⁾]"),  # superscripts, but not m² or cm²
    re.compile(r"\b(?:source|reference|ref|entry|citation|kb)\s*(?:no\.?|number|#)?\s*\d{1,3}\b", re.I),
)
# The ones that need a character outside ASCII: an ASCII text is spared them.
NON_ASCII_CITATIONS = (FOREIGN_CITATIONS[2], FOREIGN_CITATIONS[5])
ASCII_CITATIONS = tuple(pattern for pattern in FOREIGN_CITATIONS if pattern not in NON_ASCII_CITATIONS)
# Words (in lower case) a pattern cannot match without: when a text in lower case has none, the pattern is not run.
# Exact for these ignore-case patterns unless the text holds one of the four non-ASCII characters IGNORECASE
# matches to an ASCII letter (İ ı ſ K): `lowered` then answers None and every pattern runs.
FOLDS_TO_ASCII = frozenset("\u0130\u0131\u017f\u212a")
NEEDLES = {
    REFUSALS[0]: ("sorry", "afraid"),
    REFUSALS[1]: ("can", "unable", "not able", "won", "will not", "decline"),
    REFUSALS[2]: (" ai", "language model"),
    URL: ("://", "www", "script:", "mailto:", "data:", "tel:"),
    FOREIGN_CITATIONS[6]: ("source", "ref", "entry", "citation", "kb"),
}
# Parts of the report only our renderer writes; a title or heading that claims one is a forgery.
RESERVED = re.compile(r"red[\s-]*flags?|act now|disclaimer|^\W*(?:sources?|references|bibliography|citations)\b", re.I)


def lowered(text: str) -> str | None:
    """The text in lower case for the NEEDLES tests, or None when such a test could miss a match."""
    return text.lower() if text.isascii() or FOLDS_TO_ASCII.isdisjoint(text) else None


def found(pattern: re.Pattern, text: str, low: str | None) -> bool:
    """`pattern.search(text)`, skipped when `low` (the text in lower case) has none of the pattern's NEEDLES."""
    needles = NEEDLES.get(pattern)
    if needles is not None and low is not None and not any(needle in low for needle in needles):
        return False
    return pattern.search(text) is not None


def refuses(text: str) -> bool:
    """Whether a piece of text is the model declining to answer."""
    low = lowered(text)
    return any(found(pattern, text, low) for pattern in REFUSALS)


def any_refuses(texts: Iterable[str]) -> bool:
    """`any(refuses(text) for text in texts)` in one search per pattern: the texts joined by NUL, which no
    pattern matches and which is a word boundary as a text's end is (the opening one still runs per text)."""
    texts = list(texts)
    joined = "\x00".join(texts)
    low = lowered(joined)
    return any(found(pattern, joined, low) for pattern in REFUSALS[:-1]) or any(map(REFUSALS[-1].search, texts))


def unsafe_kind(text: str) -> str | None:
    """The first kind of forbidden content in a text (HTML, hidden characters, URL, e-mail, domain, phone), or None."""
    if HTML.search(text):
        return "HTML"
    if HIDDEN.search(text):
        return "invisible control characters"
    if found(URL, text, lowered(text)):
        return "a URL"
    if "@" in text and EMAIL.search(text):
        return "an e-mail address"
    if DOMAIN_HINT.search(text) and DOMAIN.search(text):
        return "a domain name"
    if PHONE_HINT.search(text) and any(phone_like(match.group()) for match in PHONE.finditer(text)):
        return "a phone number"
    return None


def phone_like(candidate: str) -> bool:
    digits = sum(char.isdigit() for char in candidate)
    return 7 <= digits <= 15 and not DATE.fullmatch(candidate.strip())


def marks_in(text: str) -> Iterator[int]:
    """Every citation number written our way, [n] or [n, m]."""
    for mark in CITATION.finditer(text):
        yield from (int(part) for part in mark.group(1).split(","))


def foreign_citation(text: str) -> bool:
    """Whether the text cites in a syntax other than [n]: (1), [^2], [1-3], [Source 4], 【1】, superscripts."""
    rest = CITATION.sub(" ", text)
    low = lowered(rest)
    return any(found(pattern, rest, low) for pattern in (ASCII_CITATIONS if rest.isascii() else FOREIGN_CITATIONS))


def reserved(text: str) -> bool:
    """Whether a title or heading names a part of the report that only our renderer writes."""
    return bool(RESERVED.search(text))
