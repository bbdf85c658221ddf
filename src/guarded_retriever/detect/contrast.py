"""Cluster contrast: a document far tighter with a few neighbours than with its neighbourhood.

Planted poison comes as a family: an attacker who wants one false answer ranked for one question
writes several paraphrases of it, so each copy has a few near neighbours (its siblings) and then
the ordinary background of its topic. Honest text on a topic is spread more evenly: its 3rd
neighbour is not much closer than its 10th-30th. So

    contrast = cos(3rd nearest neighbour) − mean cos(10th … 30th nearest neighbours)

over the namespace's vectors (main and quarantine: a sibling already quarantined is still a
sibling). Measured over all-MiniLM-L6-v2 vectors, clean Wikipedia, web and news-snippet corpora
have contrast ≤ 0.38 at their 99th percentile, while PoisonedRAG families sit at 0.55-0.75
(``../shared/research/detection.md``). The strength maps ``[floor, ceiling]`` onto ``[0, 1]``.

It needs a neighbourhood: with fewer than ``background[1]`` other documents the contrast is
undefined and the strength 0. It is not a verdict on duplicates: exact and near-exact copies
(mirrors) are what ``near_duplicate_burst`` counts, and one copy does not make a family.

The signal is incremental: a family's fifth copy arriving later raises the first four's contrast,
so ingest re-scores the existing close neighbours of every new batch (see ``GuardedIndex.add``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ContrastDetector", "merge_neighbours"]


def merge_neighbours(parts: Sequence[np.ndarray], k: int) -> np.ndarray:
    """The ``k`` largest cosines per row over several ``(n, m_i)`` candidate arrays, descending."""
    sims = np.concatenate([p for p in parts if p.size], axis=1) if any(p.size for p in parts) else None
    n = parts[0].shape[0] if parts else 0
    if sims is None or sims.shape[1] == 0:
        return np.full((n, k), -np.inf, dtype=np.float32)
    if sims.shape[1] < k:
        sims = np.concatenate([sims, np.full((n, k - sims.shape[1]), -np.inf, dtype=sims.dtype)], axis=1)
    top = -np.sort(-sims, axis=1)[:, :k]
    return top.astype(np.float32)


@dataclass(frozen=True, slots=True)
class ContrastDetector:
    """``cluster_contrast`` from each document's sorted neighbour cosines.

    Attributes:
        near_rank: the neighbour whose cosine measures the family (3: a family of 4 copies).
        background: the neighbour ranks (inclusive, from 1) whose mean is the local background.
        floor: contrast at or below which the strength is 0.
        ceiling: contrast at or above which the strength is 1.
        rescore_cosine: an existing document this close to a new one is re-scored with it.
    """

    near_rank: int = 3
    background: tuple[int, int] = (10, 30)
    floor: float = 0.35
    ceiling: float = 0.55
    rescore_cosine: float = 0.8

    @property
    def k(self) -> int:
        """How many neighbours to fetch."""
        return self.background[1]

    def contrast(self, neighbours: np.ndarray) -> np.ndarray:
        """Raw contrast per row of ``(n, k)`` descending cosines; NaN where the background is short."""
        lo, hi = self.background
        near = neighbours[:, self.near_rank - 1].astype(np.float64)
        back = neighbours[:, lo - 1: hi].astype(np.float64)
        full = np.isfinite(back).all(axis=1)
        out = np.full(len(neighbours), np.nan)
        out[full] = near[full] - back[full].mean(axis=1)
        return out

    def strength(self, neighbours: np.ndarray) -> np.ndarray:
        """The feature strength in [0, 1] (0 where the contrast is undefined)."""
        c = self.contrast(neighbours)
        s = (c - self.floor) / max(self.ceiling - self.floor, 1e-9)
        return np.nan_to_num(np.clip(s, 0.0, 1.0), nan=0.0)
