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

A *templated* family is not a planted one. Catalogues (one page per product variant, sharing a
specification and shipping block), localised copies and mirrors are just as tight, but they share
their wording: the mean word-3-gram Jaccard of a document with its ``near_rank`` nearest neighbours
is about 0.5 or more for them, while families written to look like independent sources are
paraphrases (PoisonedRAG families: median 0.08 without the copied question, 0.16-0.25 with it,
90th percentile ≤ 0.33). The strength is scaled down linearly from 1 at ``templated[0]`` to 0 at
``templated[1]``. An attacker who templates his copies instead gives up the look of independent
agreement and meets the near-duplicate signals and the per-family cap in the top-k instead.

The signal is incremental: a family's fifth copy arriving later raises the first four's contrast,
so ingest re-scores the existing close neighbours of every new batch (see ``GuardedIndex.add``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ContrastDetector", "family_overlap", "merge_neighbours", "shingles"]

_WORD = re.compile(r"\w+")


def shingles(text: str) -> frozenset[tuple[str, str, str]]:
    """The word 3-grams of ``text`` (lowercased ``\\w+`` words); a shorter text has none."""
    words = _WORD.findall(text.lower())
    return frozenset(zip(words, words[1:], words[2:], strict=False))


def family_overlap(text: frozenset[tuple[str, str, str]], siblings: Sequence[frozenset[tuple[str, str, str]]]
                   ) -> float:
    """Mean Jaccard of one document's shingles with each of its siblings' (0 with none)."""
    if not siblings:
        return 0.0
    return float(np.mean([len(text & s) / max(1, len(text | s)) for s in siblings]))


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
        templated: the family word-3-gram overlap over which the strength falls from 1 to 0.
    """

    near_rank: int = 3
    background: tuple[int, int] = (10, 30)
    floor: float = 0.35
    ceiling: float = 0.55
    rescore_cosine: float = 0.8
    templated: tuple[float, float] = (0.35, 0.5)

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

    def untemplated(self, overlap: np.ndarray) -> np.ndarray:
        """The factor in [0, 1] a family's word overlap leaves of its strength (1: paraphrases)."""
        lo, hi = self.templated
        return np.clip((hi - np.asarray(overlap, dtype=np.float64)) / max(hi - lo, 1e-9), 0.0, 1.0)
