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
from .detect.contrast import ContrastDetector, family_overlap, merge_neighbours, shingles

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


class _Pool:
    """Candidate neighbours of ``n`` vectors from several sources (shards, the batch itself),
    with who each candidate is, so a family's texts can be read back."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._sims: list[np.ndarray] = []
        self._texts: list[Callable[[int, int], str]] = []

    def add(self, sims: np.ndarray, text: Callable[[int, int], str]) -> None:
        """``sims`` is ``(n, m)``; ``text(i, j)`` is the canonical text of row ``i``'s ``j``-th candidate."""
        self._sims.append(sims)
        self._texts.append(text)

    def strength(self, detector: ContrastDetector, own: Sequence[str]) -> np.ndarray:
        """``cluster_contrast`` strength per row, scaled down for templated families (see
        ``detect.contrast``); ``own`` is each row's canonical text."""
        strengths = detector.strength(merge_neighbours(self._sims, detector.k))
        suspect = np.flatnonzero(strengths > 0)
        if not len(suspect):
            return strengths
        # Only the rare rows with a family read their siblings' texts back.
        sims = np.concatenate(self._sims, axis=1)
        source = np.concatenate([np.full(s.shape[1], i) for i, s in enumerate(self._sims)])
        column = np.concatenate([np.arange(s.shape[1]) for s in self._sims])
        for i in suspect.tolist():
            nearest = np.argsort(-sims[i], kind="stable")[: detector.near_rank]
            siblings = [shingles(self._texts[source[c]](i, column[c])) for c in nearest.tolist()
                        if np.isfinite(sims[i, c])]
            overlap = family_overlap(shingles(own[i]), siblings)
            strengths[i] *= float(detector.untemplated(np.asarray(overlap)))
        return strengths


def _shard_texts(shard: Shard, rows: np.ndarray) -> Callable[[int, int], str]:
    return lambda i, j: shard.rows[int(rows[i, j])].canonical


def batch_contrast(detector: ContrastDetector, shards: Sequence[Shard], vecs: np.ndarray, ids: Sequence[str],
                   texts: Sequence[str]) -> tuple[np.ndarray, list[tuple[Shard, np.ndarray, np.ndarray]]]:
    """``cluster_contrast`` per batch vector (``texts``: the batch's canonical texts), and each
    shard's nearest rows to the batch (``(shard, rows, cosines)``, for :func:`neighbour_updates`)."""
    k = detector.k
    pool = _Pool(len(vecs))
    found = []
    for shard in shards:
        rows, sims = _search(shard, vecs, k, _excluded(shard, ids))
        pool.add(sims, _shard_texts(shard, rows))
        found.append((shard, rows, sims))
    inner = vecs @ vecs.T
    np.fill_diagonal(inner, -np.inf)
    pool.add(inner, lambda i, j: texts[j])
    return pool.strength(detector, texts), found


def neighbour_updates(
    detector: ContrastDetector,
    found: Sequence[tuple[Shard, np.ndarray, np.ndarray]],
    vecs: np.ndarray,
    ids: Sequence[str],
    texts: Sequence[str],
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
        pool = _Pool(len(positions))
        for other in shards:
            exclude = excluded[id(other)]
            if other is shard:
                # A row is not its own neighbour: search one more and drop it.
                r, s = _search(other, own, detector.k + 1, exclude)
                s = np.where(r == positions[:, None], -np.inf, s)
            else:
                r, s = _search(other, own, detector.k, exclude)
            pool.add(s, _shard_texts(other, r))
        pool.add(own @ vecs.T, lambda i, j: texts[j])
        strengths = pool.strength(detector, [shard.rows[p].canonical for p in positions.tolist()])
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
