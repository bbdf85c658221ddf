"""Canonical text: the one form every hash, fingerprint, index and detector sees.

``canonicalize`` is idempotent (``canonicalize(canonicalize(s)) == canonicalize(s)``, checked with
hypothesis) so a manifest's content hash can be recomputed from text that went through the pipeline.

Order matters for idempotence:

1. drop invisible characters first (soft hyphen, zero-width, bidi controls, other C0/C1 controls),
   because a zero-width joiner between a letter and a combining mark stops NFKC composing them;
2. NFKC, so compatibility forms (full-width letters, ligatures, superscripts) become plain letters;
3. lowercase, then NFKC once more, because a few lowercase mappings leave non-NFKC sequences;
4. collapse every run of Unicode whitespace to one ASCII space and trim the ends.

Before each normalisation, and once more at the end, a run of more than
:data:`MAX_COMBINING_RUN` (30) non-starters (combining marks, and characters whose decomposition
starts with one) is cut to its first 30: CPython puts the marks of a run into canonical order with
an insertion sort, so 40,000 marks of mixed classes on one letter cost seconds with the GIL held
(quadratic). Thirty is the bound of Unicode's Stream-Safe Text Format (UAX #15); no script needs
more marks on one base character, so only "Zalgo" text loses anything.

Homoglyphs (Cyrillic ``а`` for Latin ``a``) are deliberately *not* folded: NFKC keeps them apart
and the poison detector reports mixed-script words as hidden text instead.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["INVISIBLE_CHARS", "MAX_COMBINING_RUN", "canonicalize", "collapse_whitespace", "tokenize"]

MAX_COMBINING_RUN = 30
"""The longest run of non-starters canonical text keeps (UAX #15 stream-safe bound)."""

# Format characters an attacker uses to hide or reorder text, plus the soft hyphen.
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_ZERO_WIDTH = "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u180e"
INVISIBLE_CHARS = "\u00ad" + _BIDI + _ZERO_WIDTH

# Control characters other than whitespace carry no text; whitespace is collapsed later instead.
_CONTROLS = "".join(
    chr(c) for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if not chr(c).isspace()
)
# Deleting with a character-class regex, not ``str.translate``: translate looks every character up
# in a dict (about 25 µs for a 350-character non-ASCII text), the regex scans in C (about 1.5 µs).
_DROP = re.compile("[" + re.escape(INVISIBLE_CHARS + _CONTROLS) + "]")
_ASCII_DROP = re.compile("[" + re.escape("".join(c for c in _CONTROLS if ord(c) < 0x80)) + "]")

# Non-starters: characters with a non-zero canonical combining class, and the few (Tibetan vowel
# signs, half-width kana voicing marks) whose decomposition starts with one. Precomputed for the
# Unicode version below (a scan of every code point costs ~0.2 s); recomputed on any other.
_UNIDATA = "14.0.0"
_NON_STARTER_RANGES = (
    "300-34e 350-36f 483-487 591-5bd 5bf 5c1-5c2 5c4-5c5 5c7 610-61a 64b-65f 670 6d6-6dc 6df-6e4 "
    "6e7-6e8 6ea-6ed 711 730-74a 7eb-7f3 7fd 816-819 81b-823 825-827 829-82d 859-85b 898-89f "
    "8ca-8e1 8e3-8ff 93c 94d 951-954 9bc 9cd 9fe a3c a4d abc acd b3c b4d bcd c3c c4d c55-c56 cbc "
    "ccd d3b-d3c d4d dca e38-e3a e48-e4b eb8-eba ec8-ecb f18-f19 f35 f37 f39 f71-f75 f7a-f7d "
    "f80-f84 f86-f87 fc6 1037 1039-103a 108d 135d-135f 1714-1715 1734 17d2 17dd 18a9 1939-193b "
    "1a17-1a18 1a60 1a75-1a7c 1a7f 1ab0-1abd 1abf-1ace 1b34 1b44 1b6b-1b73 1baa-1bab 1be6 "
    "1bf2-1bf3 1c37 1cd0-1cd2 1cd4-1ce0 1ce2-1ce8 1ced 1cf4 1cf8-1cf9 1dc0-1dff 20d0-20dc 20e1 "
    "20e5-20f0 2cef-2cf1 2d7f 2de0-2dff 302a-302f 3099-309a a66f a674-a67d a69e-a69f a6f0-a6f1 "
    "a806 a82c a8c4 a8e0-a8f1 a92b-a92d a953 a9b3 a9c0 aab0 aab2-aab4 aab7-aab8 aabe-aabf aac1 "
    "aaf6 abed fb1e fe20-fe2f ff9e-ff9f 101fd 102e0 10376-1037a 10a0d 10a0f 10a38-10a3a 10a3f "
    "10ae5-10ae6 10d24-10d27 10eab-10eac 10f46-10f50 10f82-10f85 11046 11070 1107f 110b9-110ba "
    "11100-11102 11133-11134 11173 111c0 111ca 11235-11236 112e9-112ea 1133b-1133c 1134d "
    "11366-1136c 11370-11374 11442 11446 1145e 114c2-114c3 115bf-115c0 1163f 116b6-116b7 1172b "
    "11839-1183a 1193d-1193e 11943 119e0 11a34 11a47 11a99 11c3f 11d42 11d44-11d45 11d97 "
    "16af0-16af4 16b30-16b36 16ff0-16ff1 1bc9e 1d165-1d169 1d16d-1d172 1d17b-1d182 1d185-1d18b "
    "1d1aa-1d1ad 1d242-1d244 1e000-1e006 1e008-1e018 1e01b-1e021 1e023-1e024 1e026-1e02a "
    "1e130-1e136 1e2ae 1e2ec-1e2ef 1e8d0-1e8d6 1e944-1e94a"
)


def _non_starter_spans() -> list[tuple[int, int]]:
    """The non-starters as inclusive ``(first, last)`` code point spans."""
    if unicodedata.unidata_version == _UNIDATA:
        spans = [[int(x, 16) for x in part.split("-")] for part in _NON_STARTER_RANGES.split()]
        return [(s[0], s[-1]) for s in spans]
    out: list[tuple[int, int]] = []
    for c in range(0x110000):  # pragma: no cover - another Python's Unicode version
        ch = chr(c)
        decomposed = unicodedata.normalize("NFKD", ch)
        if unicodedata.combining(ch) or (decomposed and unicodedata.combining(decomposed[0])):
            if out and out[-1][1] == c - 1:
                out[-1] = (out[-1][0], c)
            else:
                out.append((c, c))
    return out


def _long_run(spans: list[tuple[int, int]]) -> re.Pattern[str]:
    """A pattern whose group 1 is the first MAX_COMBINING_RUN marks of a longer run of ``spans``.

    The pattern opens with one bare character class (``[…][…]{29}`` rather than ``[…]{30}``):
    only then does ``re`` find candidate positions with its fast character-set scan instead of
    trying a match at every position.
    """
    cls = "".join(f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in spans)
    return re.compile(f"([{cls}][{cls}]{{{MAX_COMBINING_RUN - 1}}})[{cls}]+")


_SPANS = _non_starter_spans()
# Linear: a run shorter than the bound is retried at each of its positions, at most 30 steps each.
_LONG_RUN = _long_run(_SPANS)
# ``re`` keeps a class's BMP part as a bitmap but tests the part above U+FFFF as a list of ranges
# (66 here), one by one, for every character it looks at. Nearly no text has a character above
# U+FFFF, and one without has no such non-starter either: the BMP-only pattern finds exactly the
# same runs, about ten times faster (≈3 µs instead of ≈40 µs for a 400-character text).
_LONG_RUN_BMP = _long_run([(lo, min(hi, 0xFFFF)) for lo, hi in _SPANS if lo <= 0xFFFF])
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
# A long run needs MAX_COMBINING_RUN + 1 consecutive characters at or above the first non-starter
# (U+0300): a one-range class, so scanning for that is faster still, and Latin, Greek or Cyrillic
# text with the odd curly quote or dash never gets further.
_FIRST_NON_STARTER = re.escape(chr(min(lo for lo, _ in _SPANS)))
_MAYBE_LONG_RUN = re.compile(
    f"[{_FIRST_NON_STARTER}-\U0010ffff][{_FIRST_NON_STARTER}-\U0010ffff]{{{MAX_COMBINING_RUN}}}")

_TOKEN = re.compile(r"\w+")
# ASCII word characters as ``\w`` sees them; every other ASCII character separates tokens. For
# ASCII text, mapping separators to spaces (a byte table) and splitting is the same as ``\w+`` and
# about twice as fast.
_ASCII_WORD = frozenset(c for c in map(chr, range(128)) if _TOKEN.fullmatch(c))
_ASCII_SEPARATORS = bytes(i if chr(i) in _ASCII_WORD else 0x20 for i in range(256))


def canonicalize(text: str) -> str:
    """Return the canonical form of ``text``: NFKC, lowercase, invisibles dropped, spaces collapsed."""
    if text.isascii():
        # Fast path: ASCII needs no normalisation and has no invisible characters beyond C0 controls
        # (and printable ASCII has none of those: checking that is faster than the class scan).
        return collapse_whitespace((text if text.isprintable() else _ASCII_DROP.sub("", text)).lower())
    text = unicodedata.normalize("NFKC", _cap_runs(_DROP.sub("", text)))
    text = unicodedata.normalize("NFKC", _cap_runs(text.lower()))
    # NFKC never introduces the dropped characters, but a lowercase mapping can; drop them again.
    # Decomposition and lowercasing can lengthen a run (one character may become several marks),
    # so the bound is applied to the result once more.
    return collapse_whitespace(_cap_runs(_DROP.sub("", text)))


def collapse_whitespace(text: str) -> str:
    """``" ".join(text.split())``: each run of Unicode whitespace one space, the ends trimmed."""
    # Most texts already are: every whitespace character but the space is non-printable, so a
    # printable text without doubled or outer spaces comes back as it is. Checking costs a
    # fraction of splitting and joining (about 0.6 µs against 3 µs for a 400-character page).
    if text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text
    return " ".join(text.split())


def _cap_runs(text: str) -> str:
    """``text`` with every run of non-starters cut to :data:`MAX_COMBINING_RUN` characters."""
    if not _MAYBE_LONG_RUN.search(text):
        return text
    return (_LONG_RUN if _ASTRAL.search(text) else _LONG_RUN_BMP).sub(r"\1", text)


def tokenize(canonical: str) -> list[str]:
    """Split canonical text into word tokens (``\\w+``): the tokens BM25 and simhash share."""
    if canonical.isascii():
        return canonical.encode("ascii").translate(_ASCII_SEPARATORS).decode("ascii").split()
    return _TOKEN.findall(canonical)
