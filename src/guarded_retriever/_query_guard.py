"""Query-time poison signals: what only a query can reveal about a candidate.

``query_echo``
    PoisonedRAG-style passages are written *for* a question and carry it verbatim, because that is
    what makes a retriever rank them first. The strength is 1 when the canonical query occurs in the
    passage; otherwise it is the share of the query's word 3-grams found in the passage, mapped so
    that half or less counts as 0 (topical overlap is normal, copying is not). Queries of fewer than
    four words are too short to echo meaningfully and score 0.
``paraphrase_cluster``
    An attacker plants several mutually paraphrasing passages so one of them survives any
    de-duplication and together they dominate the top-k. The strength is the number of other
    candidates with cosine ≥ θ (``GuardConfig.paraphrase_cosine``), divided by 3 and capped at 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["paraphrase_cluster", "query_echo"]

_MIN_QUERY_TOKENS = 4


def query_echo(query_canonical: str, query_tokens: Sequence[str], passage_canonical: str) -> float:
    """How verbatim the passage repeats the query, in [0, 1]."""
    n = len(query_tokens)
    if n < _MIN_QUERY_TOKENS:
        return 0.0
    if query_canonical in passage_canonical:
        return 1.0
    padded = f" {passage_canonical} "
    grams = n - 2
    found = sum(
        f" {query_tokens[i]} {query_tokens[i + 1]} {query_tokens[i + 2]} " in padded for i in range(grams)
    )
    return max(0.0, (found / grams - 0.5) / 0.5)


def paraphrase_cluster(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Per candidate: other candidates at cosine ≥ ``threshold``, divided by 3 and capped at 1."""
    if len(vectors) < 2:
        return np.zeros(len(vectors))
    gram = vectors @ vectors.T
    neighbours = (gram >= threshold).sum(axis=1) - 1  # minus itself
    result: np.ndarray = np.minimum(1.0, neighbours / 3.0)
    return result
