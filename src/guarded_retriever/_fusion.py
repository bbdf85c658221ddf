"""Fusion of the BM25 and dense signals, as plain typed functions.

Linear fusion (the default)::

    w_final = α·bm25_n + β·dense_n + γ·provenance − δ·poison

with per-query normalisation of the two retrieval signals over the candidate pool:

* ``bm25_n = bm25 / max(bm25)``. BM25 has a meaningful zero (no term matches) that must stay zero,
  and an unbounded top that depends on the query's length and rarity; dividing by the best score
  keeps the zero and maps the best match to 1.
* ``dense_n = (cos − min cos) / (max cos − min cos)``. Sentence-embedding cosines bunch in a narrow
  band (0.2–0.6 for MiniLM); dividing by the maximum would squash the differences, min-max spreads
  the pool over [0, 1]. A pool whose cosines are all equal maps to 1.

Provenance and poison are already probabilities in [0, 1] and are used as they are.

Weighted reciprocal-rank fusion (``rrf``) is the other mode: ``Σ wᵢ / (rankᵢ + c)`` with ranks from 1
and ``c = 60``, the formula of LangChain's ``EnsembleRetriever`` (LlamaIndex's
``QueryFusionRetriever`` ranks from 0 and ignores weights).

Both functions dedupe by the stable id: a ranked list that repeats an id keeps its first (best)
occurrence, and the output has each id once.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np

__all__ = [
    "dedupe", "linear_fusion", "linear_fusion_arrays", "max_normalize", "minmax_normalize", "weighted_rrf",
]

K = TypeVar("K", bound=Hashable)
"""The stable id: a document id, or a row number inside one namespace's shard."""


def dedupe(ids: Iterable[K]) -> list[K]:
    """The ids in order, each once (first occurrence wins)."""
    return list(dict.fromkeys(ids))


def _max_norm(x: np.ndarray) -> np.ndarray:
    top = float(x.max()) if x.size else 0.0
    return x / top if top > 0 else np.zeros_like(x)


def _minmax_norm(x: np.ndarray) -> np.ndarray:
    if not x.size:
        return x
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12:
        return np.ones_like(x)
    return (x - lo) / (hi - lo)


def max_normalize(scores: Mapping[K, float]) -> dict[K, float]:
    """``x / max`` over the pool; an all-zero pool stays zero."""
    values = _max_norm(np.fromiter(scores.values(), dtype=np.float64, count=len(scores)))
    return dict(zip(scores, values.tolist(), strict=True))


def minmax_normalize(scores: Mapping[K, float]) -> dict[K, float]:
    """``(x − min) / (max − min)`` over the pool; a constant pool maps to 1."""
    values = _minmax_norm(np.fromiter(scores.values(), dtype=np.float64, count=len(scores)))
    return dict(zip(scores, values.tolist(), strict=True))


def linear_fusion_arrays(
    bm25: np.ndarray,
    dense: np.ndarray,
    provenance: np.ndarray,
    poison: np.ndarray,
    *,
    alpha: float,
    beta: float,
    gamma: float,
    delta: float,
) -> np.ndarray:
    """:func:`linear_fusion` over row-aligned arrays where every candidate has both signals.

    The retrieval core's hot path: it scores each candidate exactly on both retrievers first,
    so nothing is missing and one vectorised expression does the whole pool.
    """
    return alpha * _max_norm(bm25) + beta * _minmax_norm(dense) + gamma * provenance - delta * poison


def linear_fusion(
    bm25: Mapping[K, float],
    dense: Mapping[K, float],
    provenance: Mapping[K, float],
    poison: Mapping[K, float],
    *,
    alpha: float,
    beta: float,
    gamma: float,
    delta: float,
) -> dict[K, float]:
    """Fused score of every id in ``bm25 ∪ dense``; a missing signal counts as 0 after normalisation."""
    b = max_normalize(bm25)
    d = minmax_normalize(dense)
    return {
        i: alpha * b.get(i, 0.0) + beta * d.get(i, 0.0)
        + gamma * provenance.get(i, 0.0) - delta * poison.get(i, 0.0)
        for i in dedupe([*bm25, *dense])
    }


def weighted_rrf(ranked: Sequence[Sequence[K]], weights: Sequence[float], *, c: int = 60) -> dict[K, float]:
    """Weighted reciprocal-rank fusion: ``Σ wᵢ / (rankᵢ + c)``, ranks from 1, each list deduped."""
    if len(ranked) != len(weights):
        raise ValueError("one weight per ranked list is required")
    fused: dict[K, float] = {}
    for ids, w in zip(ranked, weights, strict=True):
        for rank, i in enumerate(dedupe(ids), start=1):
            fused[i] = fused.get(i, 0.0) + w / (rank + c)
    return fused
