"""Corpus-level evidence at ingest: each document against its namespace's neighbourhood.

``GuardedIndex.add`` asks this module two things under its write lock, before anything is written:

* the ``cluster_contrast`` strength of every document of the batch, against the namespace's main
  and quarantine vectors plus the rest of the batch (:func:`batch_contrast`);
* which *existing* documents the batch sits close to, and their new strengths
  (:func:`neighbour_updates`): the fifth copy of a planted family raises the first four's contrast,
  so they are re-scored with it, and may cross τ after they were kept.

A re-ingested id's old version is never its own neighbour: it is excluded from the search.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ._store import Row, Shard
from .detect.contrast import ContrastDetector, merge_neighbours

__all__ = ["RowUpdate", "batch_contrast", "neighbour_updates"]

_RESCORE_FANOUT = 5
"""How many of a new document's nearest existing neighbours may be re-scored with it."""


@dataclass(frozen=True, slots=True)
class RowUpdate:
    """An existing row whose evidence changed: its shard, position, and both versions."""

    shard: Shard
    position: int
    old: Row
    new: Row


def _excluded(shard: Shard, ids: Sequence[str]) -> np.ndarray:
    rows = [p for p in (shard.positions.get(i) for i in ids) if p is not None]
    return np.asarray(rows, dtype=np.int64)


def _search(shard: Shard, vecs: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, sims = shard.dense.search_many(vecs, k + len(exclude))
    if len(exclude):
        sims = np.where(np.isin(rows, exclude), -np.inf, sims)
        order = np.argsort(-sims, axis=1, kind="stable")
        rows, sims = np.take_along_axis(rows, order, axis=1), np.take_along_axis(sims, order, axis=1)
    return rows[:, :k], sims[:, :k]


def batch_contrast(detector: ContrastDetector, shards: Sequence[Shard], vecs: np.ndarray, ids: Sequence[str]
                   ) -> tuple[np.ndarray, list[tuple[Shard, np.ndarray, np.ndarray]]]:
    """``cluster_contrast`` per batch vector, and each shard's nearest rows to the batch
    (``(shard, rows, cosines)``, for :func:`neighbour_updates`)."""
    k = detector.k
    parts = []
    found = []
    for shard in shards:
        rows, sims = _search(shard, vecs, k, _excluded(shard, ids))
        parts.append(sims)
        found.append((shard, rows, sims))
    inner = vecs @ vecs.T
    np.fill_diagonal(inner, -np.inf)
    parts.append(inner)
    return detector.strength(merge_neighbours(parts, k)), found


def neighbour_updates(
    detector: ContrastDetector,
    found: Sequence[tuple[Shard, np.ndarray, np.ndarray]],
    vecs: np.ndarray,
    ids: Sequence[str],
    column: int,
    rescore: Callable[[Row, tuple[float, ...]], Row],
) -> list[RowUpdate]:
    """Existing rows within ``rescore_cosine`` of a batch vector, with their contrast recomputed
    over the namespace plus the batch; only rows whose strength changed are returned."""
    shards = [shard for shard, _, _ in found]
    excluded = {id(shard): _excluded(shard, ids) for shard in shards}
    updates: list[RowUpdate] = []
    for shard, rows, sims in found:
        close = (sims[:, :_RESCORE_FANOUT] >= detector.rescore_cosine) & (rows[:, :_RESCORE_FANOUT] >= 0)
        positions = np.unique(rows[:, :_RESCORE_FANOUT][close])
        if not len(positions):
            continue
        own = shard.dense.vectors[positions]
        parts = []
        for other in shards:
            exclude = excluded[id(other)]
            if other is shard:
                # A row is not its own neighbour: search one more and drop it.
                r, s = _search(other, own, detector.k + 1, exclude)
                s = np.where(r == positions[:, None], -np.inf, s)
            else:
                _, s = _search(other, own, detector.k, exclude)
            parts.append(s)
        parts.append(own @ vecs.T)
        strengths = detector.strength(merge_neighbours(parts, detector.k))
        for pos, strength in zip(positions.tolist(), strengths.tolist(), strict=True):
            old = shard.rows[pos]
            if abs(old.features[column] - strength) < 1e-9:
                continue
            features = list(old.features)
            features[column] = strength
            updates.append(RowUpdate(shard, pos, old, rescore(old, tuple(features))))
    return updates


def replaced(row: Row, features: tuple[float, ...], poison: float, reasons: tuple[str, ...]) -> Row:
    """``row`` with new evidence (rows are frozen: a shard swaps the whole row)."""
    return dataclasses.replace(row, features=features, poison=poison, reasons=reasons)
