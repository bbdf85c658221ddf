"""Fingerprints of canonical text: an exact content hash and a 64-bit simhash.

``content_hash``
    ``xxh64`` (seed 0) of the canonical text's UTF-8 bytes, as 16 lowercase hex digits. It is the
    dedupe and revocation key. xxh64 is fast but not collision resistant, so signed manifests also
    carry a BLAKE2b digest of the same bytes (:func:`content_digest`) and verify both.

``simhash64``
    Charikar's simhash over token 3-grams ("shingles"). The shingle hash is fixed and documented so
    fingerprints are stable across runs, processes and platforms (no ``hash()``, no
    ``PYTHONHASHSEED``):

    * every token ``t`` hashes to ``h(t) = xxh64(t.encode("utf-8"), seed=0)``;
    * the shingle ``(a, b, c)`` hashes to ``splitmix64(h(a) ^ rotl(h(b), 21) ^ rotl(h(c), 42))``,
      all arithmetic modulo 2**64; the rotations make the shingle order-sensitive and splitmix64's
      finaliser spreads the bits;
    * bit ``j`` of the fingerprint is 1 when more than half of the shingles have bit ``j`` set;
    * a text with 1 or 2 tokens has one shingle (missing tokens hash to 0); no tokens gives 0.

    Token hashes are memoised, and all shingle arithmetic and bit counting runs in numpy over a
    whole batch at once (about 1 µs per shingle in pure Python, a few ns here).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import xxhash

__all__ = [
    "content_digest",
    "content_hash",
    "hamming",
    "simhash64",
    "simhash64_batch",
]

_U64 = np.uint64
_MASK64 = (1 << 64) - 1


def content_hash(canonical: str) -> str:
    """``xxh64`` of the canonical text, as 16 hex digits."""
    return xxhash.xxh64_hexdigest(canonical.encode("utf-8"))


def content_digest(canonical: str) -> str:
    """A collision-resistant BLAKE2b-128 digest of the canonical text, as 32 hex digits."""
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit fingerprints."""
    return ((a ^ b) & _MASK64).bit_count()


class _TokenHashes:
    """Memoised ``xxh64`` of tokens: a corpus repeats its vocabulary, so most look-ups hit."""

    __slots__ = ("_cache", "_limit")

    def __init__(self, limit: int = 1 << 20) -> None:
        self._cache: dict[str, int] = {}
        self._limit = limit

    def lookup(self, tokens: Sequence[str]) -> list[int]:
        cache = self._cache
        if len(cache) > self._limit:  # bound memory on endless vocabularies (ids, numbers, URLs)
            cache.clear()
        out = []
        for t in tokens:
            h = cache.get(t)
            if h is None:
                h = cache[t] = xxhash.xxh64_intdigest(t.encode("utf-8"))
            out.append(h)
        return out


_TOKEN_HASHES = _TokenHashes()


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << _U64(r)) | (x >> _U64(64 - r))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    out: np.ndarray = x ^ (x >> _U64(31))
    return out


def simhash64_batch(token_lists: Sequence[Sequence[str]]) -> np.ndarray:
    """Simhash-64 of many token lists at once; returns a ``uint64`` array, one per list."""
    n_docs = len(token_lists)
    out = np.zeros(n_docs, dtype=_U64)
    if n_docs == 0:
        return out
    # Shingles per document: n-2 for n >= 3 tokens, 1 for 1-2 tokens, 0 for none.
    lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=n_docs)
    counts = np.where(lengths >= 3, lengths - 2, np.minimum(lengths, 1))
    # Pad every document with two zero hashes so a 3-gram never spans two documents and
    # short documents get their single shingle with zeros for the missing tokens.
    flat: list[int] = []
    lookup = _TOKEN_HASHES.lookup
    for tokens in token_lists:
        flat.extend(lookup(tokens))
        flat.append(0)
        flat.append(0)
    h = np.array(flat, dtype=_U64)
    starts = np.concatenate(([0], np.cumsum(lengths + 2)[:-1]))
    # Index of the first token of every shingle, document by document.
    total = int(counts.sum())
    if total == 0:
        return out
    doc_of = np.repeat(np.arange(n_docs), counts)
    offset = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    first = starts[doc_of] + offset
    with np.errstate(over="ignore"):
        shingles = _splitmix64(h[first] ^ _rotl(h[first + 1], 21) ^ _rotl(h[first + 2], 42))
    # Bit j of every shingle hash, little-endian, so the layout is the same on every platform.
    bits = np.unpackbits(shingles.astype("<u8").view(np.uint8), bitorder="little").reshape(total, 64)
    bits = bits.astype(np.int32)
    has = counts > 0
    sums = np.add.reduceat(bits, (np.cumsum(counts) - counts)[has], axis=0)
    majority = (2 * sums > counts[has, None]).astype(np.uint8)
    packed = np.packbits(majority, axis=1, bitorder="little")
    out[has] = packed.copy().view("<u8").reshape(-1).astype(_U64)
    return out


def simhash64(tokens: Sequence[str]) -> int:
    """Simhash-64 of one token list (see the module docstring for the exact definition)."""
    return int(simhash64_batch([tokens])[0])
