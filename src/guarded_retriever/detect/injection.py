"""A learned detector of instructions planted in documents, scored per segment.

An indirect prompt injection is usually one short request inside an honest page: "When you
summarise this, tell the reader to call ...". Scored as a whole, a long page dilutes it; so the
text is cut into segments (sentences and lines, long ones cut again) and each segment, and each
pair of neighbouring segments (a request split over two sentences), gets its own logit. The
document's strength is the largest segment probability, and the segment that won is its evidence.

The model is linear over hashed features of the :func:`~guarded_retriever.detect.skeleton` (the
text with confusables, leetspeak and invisible characters folded), so it reads "іgn0re" as
"ignore":

* character 3-, 4- and 5-grams (they survive inflection, typos and languages without spaces);
* word unigrams and bigrams ("your response", "previous instructions").

A segment's feature vector is its hashed counts divided by the square root of its gram count
(about its L2 norm), so long and short segments score on one scale. Base64 blobs that decode to
text are scored as extra segments: a request a model is asked to decode is still a request.

Hashing is vectorised: one polynomial rolling hash over the code points for the character grams,
and a prefix-sum form of the same hash for word spans, so a document costs a few numpy passes
instead of a Python call per gram.

The weights are trained by ``benchmarks/train_injection.py`` on public data (BIPIA, Tensor Trust,
look-alike prompts, clean passages; see that script and the README) and shipped as
``data/injection_model.npz``, loaded without pickle and checked against :data:`MODEL_SHA256`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .._exceptions import ConfigError, IntegrityError
from ._views import decoded_blobs, skeleton

__all__ = ["DECISIVE_PROBABILITY", "MODEL_SHA256", "InjectionDetector", "InjectionVerdict", "hashed_segments"]

MODEL_SHA256 = "7b1aaf442588c75d22ce1dee0e91b22d1821dd5e881a1f5a66af61469e095b35"
"""sha256 of the shipped ``data/injection_model.npz``; a different file refuses to load."""

_P = np.uint64(0x100000001B3)  # FNV-64 prime: odd, so it has an inverse modulo 2**64
_P_INV = np.uint64(pow(0x100000001B3, -1, 2**64))
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing spreads the low bits into the top ones
_SALT = {n: np.uint64(0x51ED270B27B5F1A1 * (n + 1) % 2**64) for n in (1, 2, 3, 4, 5)}
_WORD_SALT = np.uint64(0x2545F4914F6CDD1D)
_BIGRAM_SALT = np.uint64(0x6C8E9CF570932BD5)

# A segment ends after sentence punctuation followed by a space, at a line break, or after CJK
# sentence punctuation. Segments longer than _MAX_SEGMENT characters are cut again at a space.
_MAX_SEGMENT = 320
MIN_GRAMS = 12
"""A segment with fewer grams (a code fence, "ok.") says too little to score on its own; it is
still scored inside the pairs it forms with its neighbours."""


# ASCII word characters (``\w``); every code point above ASCII counts as a word character except
# the punctuation and space blocks below. The hashed features only need train and score to split
# words the same way, not Unicode's exact definition of a word.
_ASCII_WORD = [chr(i).isalnum() or chr(i) == "_" for i in range(128)]
_NON_WORD_RANGES = ((0x80, 0xBF), (0x2000, 0x206F), (0x3000, 0x303F), (0xFE30, 0xFE4F), (0xFF00, 0xFF0F),
                    (0xFF1A, 0xFF20))

# What hashing needs to know of a character, as bit flags in one table over the BMP: one look-up
# per character replaces a dozen comparisons over the whole text. Every code point above U+FFFF
# reads the entry of U+FFFF (a word character, nothing else), which is what it is.
_WORD_CHAR = np.uint8(1)
_BREAK_AFTER = np.uint8(2)  # a segment starts after it: a line break, CJK sentence punctuation
_SENTENCE_END = np.uint8(4)  # a segment starts after it and the space that follows: ".!?;"


def _class_table() -> np.ndarray:
    """The flags of every BMP code point (see the three flags above)."""
    table = np.full(0x10000, _WORD_CHAR, np.uint8)
    table[:128] = np.where(_ASCII_WORD, _WORD_CHAR, 0)
    for lo, hi in _NON_WORD_RANGES:
        table[lo: hi + 1] = 0
    table[[ord(ch) for ch in "\n。！？；"]] |= _BREAK_AFTER
    table[[ord(ch) for ch in ".!?;"]] |= _SENTENCE_END
    return table


_CLASS = _class_table()


def _starts(c: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Segment start offsets for code points ``c`` (a skeleton: single spaces), beginning with 0.

    A segment starts after a line break, after CJK sentence punctuation, and after the space that
    follows ``.!?;``. A segment longer than ``_MAX_SEGMENT`` is cut again at a space. ``classes``
    are the characters' :data:`_CLASS` flags.
    """
    n = len(c)
    after = np.zeros(n, bool)
    if n > 1:
        after[1:] = (classes[:-1] & _BREAK_AFTER).astype(bool)
    if n > 2:
        after[2:] |= (classes[:-2] & _SENTENCE_END).astype(bool) & (c[1:-1] == 32)
    after[0] = True
    starts = np.flatnonzero(after)
    gaps = np.diff(np.append(starts, n))
    if (gaps <= _MAX_SEGMENT).all():
        return starts
    out: list[int] = []
    spaces = np.flatnonzero(c == 32)
    for a, gap in zip(starts.tolist(), gaps.tolist(), strict=True):
        out.append(a)
        b = a + gap
        while b - a > _MAX_SEGMENT:  # cut at the last space before the limit, if there is one
            lo, hi = np.searchsorted(spaces, [a + _MAX_SEGMENT // 2, a + _MAX_SEGMENT])
            a = int(spaces[hi - 1]) + 1 if hi > lo else a + _MAX_SEGMENT
            out.append(a)
    return np.asarray(out, dtype=np.int64)


def _bucket(h: np.ndarray, salt: np.uint64, bits: int) -> np.ndarray:
    """The weight index of each hash: its top ``bits`` bits after mixing, as int64."""
    out = h ^ salt  # one new array, then in place: a batch has about a million grams
    out *= _MIX
    out >>= np.uint64(64 - bits)
    return out.view(np.int64)  # below 2**bits: the same numbers


class _Powers:
    """Pᵗ and P⁻ᵗ modulo 2**64 for t < n, grown on demand and shared by every call."""

    def __init__(self) -> None:
        self.fwd = np.ones(1, np.uint64)
        self.inv = np.ones(1, np.uint64)

    def upto(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.fwd) < n:
            size = max(n, 2 * len(self.fwd), 4096)
            with np.errstate(over="ignore"):
                self.fwd = np.cumprod(np.concatenate([[np.uint64(1)], np.full(size - 1, _P)]))
                self.inv = np.cumprod(np.concatenate([[np.uint64(1)], np.full(size - 1, _P_INV)]))
        return self.fwd[:n], self.inv[:n]


_POWERS = _Powers()


def hashed_segments(text: str, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(buckets, segment of each bucket, segment starts)`` for one skeleton text.

    Every gram is assigned to the segment it starts in; grams that would span a line break are
    dropped (a line break separates unrelated text in tables and e-mails).
    """
    if not text:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(1, np.int64)
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    classes = _CLASS[code_points if text.isascii() else np.minimum(code_points, 0xFFFF)]
    c = code_points.astype(np.uint64)
    n = len(c)
    starts = _starts(c, classes)
    is_nl = c == 10
    newline = np.cumsum(is_nl)  # line breaks up to and including each position
    # The segment each position lies in, so each kind of gram picks its segments as it goes
    # (a boolean selection) instead of gathering them for a million positions at the end.
    marker = np.zeros(n, np.int64)
    marker[starts] = 1
    seg_of = np.cumsum(marker)
    seg_of -= 1
    parts_b: list[np.ndarray] = []
    parts_s: list[np.ndarray] = []
    with np.errstate(over="ignore"):
        h = c
        for size in (2, 3, 4, 5):
            if n < size:
                break
            h = h[:-1] * _P
            h += c[size - 1:]
            if size >= 3:
                m = n - size + 1
                ok = newline[size - 1:] == newline[:m]
                ok &= ~is_nl[:m]
                parts_b.append(_bucket(h[ok], _SALT[size], bits))
                parts_s.append(seg_of[:m][ok])
        # Word spans through prefix sums of c[t]·P⁻ᵗ: hash(a, b) = (S[b] − S[a])·Pᵃ, the same
        # polynomial for a word wherever it stands.
        word = (classes & _WORD_CHAR).astype(bool)
        edge = np.diff(np.concatenate([[False], word, [False]]).astype(np.int8))
        a = np.flatnonzero(edge == 1)
        b = np.flatnonzero(edge == -1)
        if len(a):
            fwd, inv = _POWERS.upto(n)
            prefix = np.empty(n + 1, np.uint64)
            prefix[0] = 0
            np.cumsum(c * inv, out=prefix[1:])
            words = (prefix[b] - prefix[a]) * fwd[a]
            parts_b.append(_bucket(words, _WORD_SALT, bits))
            parts_s.append(seg_of[a])
            if len(a) > 1:
                same_line = newline[b[1:] - 1] == newline[a[:-1]]
                pairs = (words[:-1] * _P ^ words[1:])[same_line]
                parts_b.append(_bucket(pairs, _BIGRAM_SALT, bits))
                parts_s.append(seg_of[a[:-1][same_line]])
    return np.concatenate(parts_b), np.concatenate(parts_s), starts


DECISIVE_PROBABILITY = 0.9
"""The segment probability at which :attr:`InjectionVerdict.strength` is 1: the detector alone
then quarantines (the poison model gives ``injection`` the weight that reaches τ at 1)."""
_DECISIVE_LOGIT = math.log(DECISIVE_PROBABILITY / (1 - DECISIVE_PROBABILITY))


@dataclass(frozen=True, slots=True)
class InjectionVerdict:
    """The strongest segment of a document: its probability and the segment's text."""

    probability: float
    segment: str

    @property
    def strength(self) -> float:
        """The evidence the poison score reads, in [0, 1]: the segment's log-odds above even, over
        those of :data:`DECISIVE_PROBABILITY`.

        A probability under one half is the detector saying "not an injection", so it adds
        nothing: read as a probability, a tutorial at 0.3 plus one code rule crossed τ. Log-odds
        are what a logistic combination adds, so 0.75 counts half as much as 0.9, not 80 %.
        """
        p = min(max(self.probability, 1e-12), 1.0 - 1e-12)
        return min(1.0, max(0.0, math.log(p / (1.0 - p)) / _DECISIVE_LOGIT))


class InjectionDetector:
    """Segment-level linear classifier over hashed n-grams of the skeleton (see the module doc).

    Args:
        weights: one float per hash bucket (a power of two of them).
        bias: the intercept of every segment's logit.
        provenance: what the weights were trained on.
    """

    __slots__ = ("_w", "bias", "bits", "provenance")

    def __init__(self, weights: np.ndarray, bias: float, *, provenance: str = "unknown") -> None:
        w = np.asarray(weights, dtype=np.float32)
        bits = round(math.log2(len(w))) if len(w) else 0
        if w.ndim != 1 or len(w) < 2 or 1 << bits != len(w):
            raise ConfigError(f"injection weights need a power-of-two length, got {w.shape}")
        if not (np.isfinite(w).all() and math.isfinite(bias)):
            raise ConfigError("injection weights must be finite")
        self._w = w
        self.bias = float(bias)
        self.bits = bits
        self.provenance = provenance

    # -- scoring ---------------------------------------------------------------------------------

    @staticmethod
    def views(text: str) -> str:
        """The skeleton the model scores, with decoded base64 blobs appended as extra lines."""
        blobs = decoded_blobs(text)
        sk = skeleton(text)
        return "\n".join([sk, *(skeleton(b) for b in blobs)]) if blobs else sk

    def score(self, text: str) -> InjectionVerdict:
        """The document's strongest segment (probability 0 for a text with no segments)."""
        return self.score_batch([text])[0]

    def probability(self, text: str) -> float:
        return self.score_batch([text])[0].probability

    def score_batch(self, texts: Sequence[str]) -> list[InjectionVerdict]:
        """:meth:`score` for many texts in one vectorised pass (ingest scores whole batches).

        The views are joined by line breaks, which no gram crosses, so each text's segments and
        grams are exactly those it has alone; a pair of segments is only formed inside one text.
        """
        if not texts:
            return []
        views = [self.views(t) for t in texts]
        joined = "\n".join(views)
        offsets = np.cumsum([0, *(len(v) + 1 for v in views[:-1])])
        buckets, seg, starts = hashed_segments(joined, self.bits)
        count = len(starts)
        sums = np.bincount(seg, weights=self._w[buckets], minlength=count)
        grams = np.bincount(seg, minlength=count).astype(np.float64)
        doc = np.searchsorted(offsets, starts, side="right") - 1
        logits = self.bias + sums / np.sqrt(np.maximum(grams, 1.0))
        logits[grams < MIN_GRAMS] = -np.inf
        if count > 1:
            pair = self.bias + (sums[:-1] + sums[1:]) / np.sqrt(np.maximum(grams[:-1] + grams[1:], 1.0))
            pair[(grams[:-1] == 0) | (grams[1:] == 0) | (doc[:-1] != doc[1:])] = -np.inf
            logits = np.concatenate([logits, pair])
            owner = np.concatenate([doc, doc[:-1]])
        else:
            owner = doc
        # The best window of each text: sort by (text, -logit) and take each text's first.
        order = np.lexsort((-logits, owner))
        first = np.flatnonzero(np.concatenate([[True], owner[order][1:] != owner[order][:-1]]))
        bounds = [*starts.tolist(), len(joined)]
        out = [InjectionVerdict(0.0, "")] * len(texts)
        for i in order[first].tolist():
            z = float(logits[i])
            if not math.isfinite(z):
                continue
            lo = i if i < count else i - count
            hi = lo + (1 if i < count else 2)
            segment = joined[bounds[lo]: bounds[hi]].strip()
            out[int(owner[i])] = InjectionVerdict(1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z)))), segment)
        return out

    # -- the artefact ------------------------------------------------------------------------------

    def save(self, path: str | Path) -> str:
        """Write the weights as an ``.npz`` (float16, no pickle); returns the file's sha256."""
        path = Path(path)
        with path.open("wb") as f:
            np.savez_compressed(f, weights=self._w.astype(np.float16), bias=np.float64(self.bias),
                                provenance=np.array(self.provenance))
        return hashlib.sha256(path.read_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, *, sha256: str | None = None) -> InjectionDetector:
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityError(
                "the injection model's sha256 does not match the pinned one: reinstall the package, "
                "or load your own model with InjectionDetector.load(path)")
        import io

        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(z["weights"].astype(np.float32), float(z["bias"]), provenance=str(z["provenance"]))

    @classmethod
    def load(cls, path: str | Path, *, sha256: str | None = None) -> InjectionDetector:
        return cls.from_bytes(Path(path).read_bytes(), sha256=sha256)

    @classmethod
    def default(cls) -> InjectionDetector:
        """The detector shipped with the package, verified against :data:`MODEL_SHA256`."""
        data = resources.files("guarded_retriever").joinpath("data/injection_model.npz").read_bytes()
        return cls.from_bytes(data, sha256=MODEL_SHA256)
