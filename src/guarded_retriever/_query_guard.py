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
    candidates with cosine ≥ θ (``GuardConfig.paraphrase_cosine``), divided by 3 and capped at 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["EchoScorer", "paraphrase_cluster", "query_echo"]

_MIN_QUERY_TOKENS = 4


class EchoScorer:
    """``query_echo`` for one query against many passages; the query's 3-grams are built once."""

    __slots__ = ("_grams", "_query", "_scale")

    def __init__(self, query_canonical: str, query_tokens: Sequence[str]) -> None:
        self._query = query_canonical
        t = query_tokens
        self._grams = (
            [f" {t[i]} {t[i + 1]} {t[i + 2]} " for i in range(len(t) - 2)]
            if len(t) >= _MIN_QUERY_TOKENS else []
        )
        self._scale = min(1.0, (len(t) - _MIN_QUERY_TOKENS + 1) / 4)

    def __call__(self, passage_canonical: str) -> float:
        """How verbatim the passage repeats the query, in [0, 1]."""
        grams = self._grams
        if not grams:
            return 0.0
        if self._query in passage_canonical:
            return self._scale
        padded = f" {passage_canonical} "
        # The strength is positive only when more than half of the grams occur, so stop at the
        # first miss that rules that out: most passages of a pool echo nothing.
        allowed = len(grams) - (len(grams) // 2 + 1)
        found = missed = 0
        for gram in grams:
            if gram in padded:
                found += 1
            else:
                missed += 1
                if missed > allowed:
                    return 0.0
        return self._scale * max(0.0, (found / len(grams) - 0.5) / 0.5)


def query_echo(query_canonical: str, query_tokens: Sequence[str], passage_canonical: str) -> float:
    """How verbatim the passage repeats the query, in [0, 1] (see :class:`EchoScorer`)."""
    return EchoScorer(query_canonical, query_tokens)(passage_canonical)


def paraphrase_cluster(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Per candidate: other candidates at cosine ≥ ``threshold``, divided by 3 and capped at 1."""
    if len(vectors) < 2:
        return np.zeros(len(vectors))
    gram = vectors @ vectors.T
    neighbours = (gram >= threshold).sum(axis=1) - 1  # minus itself
    result: np.ndarray = np.minimum(1.0, neighbours / 3.0)
    return result
