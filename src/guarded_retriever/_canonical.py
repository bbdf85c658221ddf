"""Canonical text: the one form every hash, fingerprint, index and detector sees.

``canonicalize`` is idempotent (``canonicalize(canonicalize(s)) == canonicalize(s)``, checked with
hypothesis) so a manifest's content hash can be recomputed from text that went through the pipeline.

Order matters for idempotence:

1. drop invisible characters first (soft hyphen, zero-width, bidi controls, other C0/C1 controls),
   because a zero-width joiner between a letter and a combining mark stops NFKC composing them;
2. NFKC, so compatibility forms (full-width letters, ligatures, superscripts) become plain letters;
3. lowercase, then NFKC once more, because a few lowercase mappings leave non-NFKC sequences;
4. collapse every run of Unicode whitespace to one ASCII space and trim the ends.

Homoglyphs (Cyrillic ``а`` for Latin ``a``) are deliberately *not* folded: NFKC keeps them apart
and the poison detector reports mixed-script words as hidden text instead.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["INVISIBLE_CHARS", "canonicalize", "tokenize"]

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

_TOKEN = re.compile(r"\w+")
# ASCII word characters as ``\w`` sees them; every other ASCII character separates tokens. For
# ASCII text, mapping separators to spaces (a byte table) and splitting is the same as ``\w+`` and
# about twice as fast.
_ASCII_WORD = frozenset(c for c in map(chr, range(128)) if _TOKEN.fullmatch(c))
_ASCII_SEPARATORS = bytes(i if chr(i) in _ASCII_WORD else 0x20 for i in range(256))


def canonicalize(text: str) -> str:
    """Return the canonical form of ``text``: NFKC, lowercase, invisibles dropped, spaces collapsed."""
    if text.isascii():
        # Fast path: ASCII needs no normalisation and has no invisible characters beyond C0 controls.
        return " ".join(_ASCII_DROP.sub("", text).lower().split())
    text = unicodedata.normalize("NFKC", _DROP.sub("", text))
    text = unicodedata.normalize("NFKC", text.lower())
    # NFKC never introduces the dropped characters, but a lowercase mapping can; drop them again.
    return " ".join(_DROP.sub("", text).split())


def tokenize(canonical: str) -> list[str]:
    """Split canonical text into word tokens (``\\w+``): the tokens BM25 and simhash share."""
    if canonical.isascii():
        return canonical.encode("ascii").translate(_ASCII_SEPARATORS).decode("ascii").split()
    return _TOKEN.findall(canonical)
