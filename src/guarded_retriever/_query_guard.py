"""Query-time poison signals: what only a query can reveal about a candidate.

``query_echo``
    PoisonedRAG-style passages are written *for* a question and carry it verbatim, because that is
    what makes a retriever rank them first. The strength is 1 when the canonical query occurs in the
    passage; otherwise it is the share of the query's word 3-grams found in the passage, mapped so
    that half or less counts as 0 (topical overlap is normal, copying is not). A short query turns up
    verbatim in honest passages by chance ("causes of chest pain"), a long one does not, so the
    strength is scaled by the query's length: ×0.25 at four words up to ×1 at seven or more.
    Queries of fewer than four words score 0.
``paraphrase_cluster``
    An attacker plants several mutually paraphrasing passages so one of them survives any
    de-duplication and together they dominate the top-k. The strength is the number of other
    candidates with cosine ≥ θ (``GuardConfig.paraphrase_cosine``), divided by 2 and capped at 1:
    a family of three is full strength.

:class:`FamilyCap` is the backstop for a family that no signal reaches τ on: at most
``GuardConfig.family_cap`` mutual paraphrases enter the kept top-k ahead of the rest of the pool.
It re-ranks, it does not remove: a capped member is kept after the pool's other survivors, so a
query whose whole pool is one family still gets k passages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import numpy as np

__all__ = ["EchoScorer", "FamilyCap", "paraphrase_cluster", "query_echo"]

_MIN_QUERY_TOKENS = 4

T = TypeVar("T")


class EchoScorer:
    """``query_echo`` for one query against many passages; the query's 3-grams are built once.

    The cost is linear in the passage and the query. A query with few distinct 3-grams looks each
    up with ``in`` (a C scan of the passage per gram); one with more splits the passage into its
    words once and looks every gram up in the set of its word 3-grams. Both count the same grams:
    canonical text is words separated by single spaces, so ``" a b c "`` occurs in the padded
    passage exactly when ``(a, b, c)`` is one of its consecutive word triples.
    """

    __slots__ = ("_counts", "_query", "_scale", "_total")

    _SCAN_GRAMS = 16
    """Up to this many distinct grams, ``in`` scans beat building the passage's gram set."""

    def __init__(self, query_canonical: str, query_tokens: Sequence[str]) -> None:
        self._query = query_canonical
        t = query_tokens
        counts: dict[tuple[str, str, str], int] = {}
        if len(t) >= _MIN_QUERY_TOKENS:
            for gram in zip(t, t[1:], t[2:], strict=False):
                counts[gram] = counts.get(gram, 0) + 1
        self._counts = counts
        self._total = sum(counts.values())
        self._scale = min(1.0, (len(t) - _MIN_QUERY_TOKENS + 1) / 4)

    def __call__(self, passage_canonical: str) -> float:
        """How verbatim the passage repeats the query, in [0, 1]."""
        total = self._total
        if not total:
            return 0.0
        if self._query in passage_canonical:
            return self._scale
        # The strength is positive only when more than half of the grams occur, so stop at the
        # first miss that rules that out: most passages of a pool echo nothing.
        allowed = total - (total // 2 + 1)
        counts = self._counts
        if len(counts) <= self._SCAN_GRAMS:
            padded = f" {passage_canonical} "
            present = (f" {a} {b} {c} " in padded for a, b, c in counts)
        else:
            words = passage_canonical.split(" ")
            grams = set(zip(words, words[1:], words[2:], strict=False))
            present = (gram in grams for gram in counts)
        found = missed = 0
        for n, hit in zip(counts.values(), present, strict=True):
            if hit:
                found += n
            else:
                missed += n
                if missed > allowed:
                    return 0.0
        return self._scale * max(0.0, (found / total - 0.5) / 0.5)


def query_echo(query_canonical: str, query_tokens: Sequence[str], passage_canonical: str) -> float:
    """How verbatim the passage repeats the query, in [0, 1] (see :class:`EchoScorer`)."""
    return EchoScorer(query_canonical, query_tokens)(passage_canonical)


def paraphrase_cluster(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Per candidate: other candidates at cosine ≥ ``threshold``, divided by 2 and capped at 1."""
    if len(vectors) < 2:
        return np.zeros(len(vectors))
    gram = vectors @ vectors.T
    neighbours = (gram >= threshold).sum(axis=1) - 1  # minus itself
    result: np.ndarray = np.minimum(1.0, neighbours / 2.0)
    return result


class FamilyCap(Generic[T]):
    """Whether a pool candidate would be one paraphrase too many among the hits kept so far, and
    the hits held back for that until the window is full.

    Honest top-k lists rarely hold three passages at cosine ≥ 0.85 of each other (mirrors and
    catalogue variants do, and lose nothing by being spread out); planted families are written to.
    The pool's Gram matrix is built on the first check, so a query that keeps nothing pays nothing.
    """

    __slots__ = ("_cap", "_gram", "_held", "_threshold", "_vectors", "deferred")

    def __init__(self, vectors: np.ndarray, threshold: float, cap: int | None) -> None:
        self._vectors = vectors
        self._threshold = threshold
        self._cap = cap
        self._gram: np.ndarray | None = None
        self._held: list[tuple[int, T]] = []
        self.deferred = 0
        """How many hits were held back (whether or not they found room after)."""

    def hold(self, position: int, hit: T) -> None:
        """Hold back the hit at pool ``position`` until :meth:`release`."""
        self._held.append((position, hit))
        self.deferred += 1

    def release(self, kept: list[T], kept_at: list[int], k: int) -> None:
        """Append the held hits, in pool order, to ``kept`` (and their positions to ``kept_at``)
        while fewer than ``k`` are kept; the rest are dropped from the hold."""
        for position, hit in self._held[: max(0, k - len(kept))]:
            kept.append(hit)
            kept_at.append(position)
        self._held = []

    def __call__(self, position: int, kept: Sequence[int]) -> bool:
        """True when ``position`` has at least ``cap`` paraphrases among the ``kept`` positions."""
        if self._cap is None or len(kept) < self._cap:
            return False
        if self._gram is None:
            self._gram = self._vectors @ self._vectors.T
        return int((self._gram[position, kept] >= self._threshold).sum()) >= self._cap
