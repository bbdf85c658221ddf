"""What a detector reads: the text as a model would understand it, not as its bytes spell it.

An attacker who knows that a detector matches "ignore" writes "іgnore" (Cyrillic і), "1gn0r3",
"ig\u200bnore", or base64-encodes the whole request and asks the model to decode it. A language
model reads all of those as the same request, so the detector must too. :func:`skeleton` folds a
text onto one spelling:

1. invisible characters dropped, NFKC, lowercase (as :func:`~guarded_retriever.canonicalize`);
2. confusables folded: the Cyrillic, Greek and other letters that render like Latin ones (the
   lowercase subset of Unicode's UTS #39 confusables that maps to a single ASCII letter);
3. leetspeak folded, only inside tokens that mix letters with digits or ``@$``: "2010" and "v2"
   keep their digits, "1gn0r3" becomes "ignore".

Markup is unwrapped first: an HTML or markdown comment, an image's alt text or title, a tag's
attributes are where a page hides text from its human readers and shows it to a model, so their
contents become lines of their own (and the delimiters around them disappear). Line breaks are
kept (as ``\\n``): they separate segments. :func:`decoded_blobs` returns what the base64 blobs
of a text decode to, when that is readable text: a second view to score.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

from .._canonical import INVISIBLE_CHARS, collapse_whitespace

__all__ = ["decoded_blobs", "skeleton"]

# Lowercase look-alikes of ASCII letters (UTS #39 confusables, single-letter targets), after NFKC
# and lowercasing. Uppercase forms need no entry: lowercasing happens first.
_CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i",
    "ј": "j", "к": "k", "ӏ": "l", "м": "m", "н": "h", "о": "o", "р": "p", "ԛ": "q", "ѕ": "s",
    "т": "t", "ц": "u", "ѵ": "v", "ԝ": "w", "х": "x", "у": "y", "ү": "y", "ь": "b",
    "ɡ": "g", "ɩ": "i", "ɪ": "i",
    # Greek
    "α": "a", "β": "b", "ϲ": "c", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ω": "w", "ϳ": "j",
    # Latin extensions and symbols that render as plain letters
    "ı": "i", "ȷ": "j", "ℓ": "l", "ſ": "s", "ꞵ": "b", "ᴄ": "c", "ᴏ": "o", "ᴠ": "v", "ᴡ": "w",
    "ᴢ": "z",
}
# Cyrillic and Greek are whole scripts: fold a letter only inside a word that also has a Latin
# letter, or in a word made only of look-alikes (a disguise of an English word). Russian or Greek
# prose keeps its letters: "вода" is not "boda".
_CONFUSABLE_CLASS = "".join(sorted(_CONFUSABLES))
_LATINISH_WORD = re.compile(rf"\w*[a-z{re.escape(_CONFUSABLE_CLASS)}]\w*")
_NON_LATIN_LETTER = re.compile(r"[^\W\d_a-z]")
_CONFUSABLE_TABLE = str.maketrans(_CONFUSABLES)
_ANY_CONFUSABLE = re.compile(f"[{re.escape(_CONFUSABLE_CLASS)}]")

_DROP = re.compile("[" + re.escape(INVISIBLE_CHARS) + "\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")

_LEET_TABLE = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                             "$": "s", "|": "l", "!": "i"})
# Whether there is anything to fold: a leet symbol next to a letter. Written as "a symbol with a
# letter before or after it" so the pattern opens with a character class: ``re`` then jumps from
# symbol to symbol instead of trying a match at every position (about 10 µs → 1.5 µs a page).
_LEET_HINT = re.compile(r"[013457@$!|](?:(?<=[a-z].)|(?=[a-z]))")
# A token with at least one letter and one leet symbol, where the symbol is not just a trailing
# count ("v2", "mp3", "covid19"): at least two letters and a symbol between or before letters.
_LEET_TOKEN = re.compile(r"(?<![\w@$])(?=[\w@$!|]*[a-z])(?=[\w@$!|]*[013457@$][\w@$!|]*[a-z])[\w@$!|]{3,}")


def _fold_confusables(text: str) -> str:
    def fold(m: re.Match[str]) -> str:
        word = m.group()
        folded = word.translate(_CONFUSABLE_TABLE)
        # All letters Latin after folding: a disguised English word. A Russian word keeps some
        # Cyrillic letters that have no Latin twin, and is left alone.
        return folded if not _NON_LATIN_LETTER.search(folded) else word

    return _LATINISH_WORD.sub(fold, text)


def _fold_leet(text: str) -> str:
    return _LEET_TOKEN.sub(lambda m: m.group().translate(_LEET_TABLE), text)


_COMMENT = re.compile(r"<!--|-->|^\s*\[//\]:\s*#\s*", re.MULTILINE)
_ATTRIBUTE = re.compile(r"""\b(?:alt|title|aria-label|content|placeholder)\s*=\s*(?:"([^"]*)"|'([^']*)')""",
                        re.IGNORECASE)
_TAG = re.compile(r"</?[A-Za-z][^<>]{0,500}>")
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]*)(?:\s+\"([^\"]*)\")?\)")


def _unwrap_markup(text: str) -> str:
    """Comments, alt texts, titles and tag attributes as lines of their own; tags removed."""
    if "<" in text:
        text = _TAG.sub(lambda m: "\n" + "\n".join(a or b for a, b in _ATTRIBUTE.findall(m.group())) + "\n",
                        _COMMENT.sub("\n", text))
    elif "[//]" in text:
        text = _COMMENT.sub("\n", text)
    if "![" in text:
        text = _MD_IMAGE.sub(lambda m: "\n" + "\n".join(p for p in m.groups() if p) + "\n", text)
    return text


def skeleton(text: str) -> str:
    """The folded form detectors read: see the module docstring. Keeps ``\\n`` between lines."""
    if "<" in text or "![" in text or "[//]" in text:
        text = _unwrap_markup(text)
    if text.isascii():
        # Printable ASCII has nothing to drop; checking that is faster than the class scan.
        out = (text if text.isprintable() else _DROP.sub("", text)).lower()
    else:
        out = unicodedata.normalize("NFKC", _DROP.sub("", text)).lower()
        out = _DROP.sub("", out)
        if _ANY_CONFUSABLE.search(out):
            out = _fold_confusables(out)
    if _LEET_HINT.search(out):
        out = _fold_leet(out)
    if "\n" not in out:
        return collapse_whitespace(out)
    return "\n".join(filter(None, map(collapse_whitespace, out.split("\n"))))


_BLOB = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{24,}={0,2}(?![A-Za-z0-9+/=])")
_MAX_BLOBS = 8
# A blob is a run of at least 24 base64 characters, all ASCII: in UTF-8 bytes mapped through this
# table such a run reads "x" * 24. Looking for that (about 1 µs a page) spares most texts the
# regex, which tries a match at every position (about 5 µs a page) and finds nothing in prose.
_BASE64_RUN_TABLE = bytes(0x78 if re.fullmatch(r"[A-Za-z0-9+/]", chr(i)) else 0x20 for i in range(256))
_BASE64_RUN = b"x" * 24


def decoded_blobs(text: str) -> list[str]:
    """What the text's base64 blobs decode to, where that is mostly printable text.

    Only the first few blobs are tried, so a page of hashes costs no more than a page of prose.
    """
    if len(text) < 24 or _BASE64_RUN not in text.encode("utf-8", "surrogatepass").translate(_BASE64_RUN_TABLE):
        return []
    out: list[str] = []
    for m in _BLOB.finditer(text):
        blob = m.group()
        if not (any(c.isdigit() for c in blob) or any(c.isupper() for c in blob)):
            continue  # a long lowercase word run is not base64 worth decoding
        try:
            raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            continue
        printable = sum(c.isprintable() or c.isspace() for c in decoded)
        letters = sum(c.isalpha() for c in decoded)
        if decoded and printable / len(decoded) > 0.95 and letters / len(decoded) > 0.5 and " " in decoded:
            out.append(decoded)
        if len(out) >= _MAX_BLOBS:
            break
    return out
