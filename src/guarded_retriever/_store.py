"""Storage of guarded documents: one shard per namespace, in a main and a quarantine partition.

A shard holds a namespace's documents, its BM25 index and its FAISS index, row-aligned. Rows are
append-only; replacing or deleting a document tombstones its row, which both indexes then skip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._bm25 import BM25Shard
from ._dense import DenseShard, IndexKind

__all__ = ["Partition", "Row", "Shard"]


@dataclass(frozen=True, slots=True)
class Row:
    """One stored document and everything the guard concluded about it at ingest."""

    id: str
    text: str
    canonical: str
    metadata: Mapping[str, Any]
    namespace: str
    content_hash: str
    source_url: str | None
    manifest_id: str | None
    provenance: float
    features: tuple[float, ...]
    poison: float
    reasons: tuple[str, ...]


class Shard:
    """The documents of one namespace in one partition, with their BM25 and FAISS indexes."""

    __slots__ = ("_poison", "_prior_arrays", "_provenance", "alive", "bm25", "dense", "namespace", "positions",
                 "rows")

    def __init__(self, namespace: str, dim: int, *, k1: float, b: float, kind: IndexKind) -> None:
        self.namespace = namespace
        self.rows: list[Row] = []
        self.alive: list[bool] = []
        self.positions: dict[str, int] = {}
        # Row-aligned copies of the two per-document priors fusion needs, gathered per query.
        self._provenance: list[float] = []
        self._poison: list[float] = []
        self._prior_arrays: tuple[np.ndarray, np.ndarray] | None = None
        self.bm25 = BM25Shard(k1=k1, b=b)
        self.dense = DenseShard(dim, kind=kind)

    def __len__(self) -> int:
        return len(self.positions)

    def add(self, row: Row, tokens: list[str], vector: np.ndarray) -> None:
        self.discard(row.id)
        position = self.bm25.add(tokens)
        self.dense.add(vector.reshape(1, -1))
        self.rows.append(row)
        self._provenance.append(row.provenance)
        self._poison.append(row.poison)
        self._prior_arrays = None
        self.alive.append(True)
        self.positions[row.id] = position

    def discard(self, doc_id: str) -> Row | None:
        position = self.positions.pop(doc_id, None)
        if position is None:
            return None
        self.alive[position] = False
        self.bm25.remove(position)
        self.dense.remove(position)
        return self.rows[position]

    def restore(self, rows: list[Row], bm25: BM25Shard, vectors: np.ndarray, index: Any = None) -> None:
        """Adopt a loaded shard's rows and engines (see ``_persist``); the shard must be empty."""
        if self.rows:
            raise ValueError("restore() needs an empty shard")
        self.rows = list(rows)
        self.alive = [True] * len(rows)
        self.positions = {r.id: i for i, r in enumerate(rows)}
        self._provenance = [r.provenance for r in rows]
        self._poison = [r.poison for r in rows]
        self._prior_arrays = None
        self.bm25 = bm25
        self.dense.restore(vectors, index)

    def priors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(provenance, poison)`` of the given rows, as arrays in the same order."""
        arrays = self._prior_arrays
        if arrays is None:  # rebuilt once after a batch, not per query
            arrays = self._prior_arrays = (np.asarray(self._provenance, dtype=np.float64),
                                           np.asarray(self._poison, dtype=np.float64))
        return arrays[0][rows], arrays[1][rows]


class Partition:
    """All shards of one partition (``main`` or ``quarantine``), by namespace key."""

    def __init__(self, name: str, *, k1: float, b: float, kind: IndexKind) -> None:
        self.name = name
        self._k1, self._b, self._kind = k1, b, kind
        self.shards: dict[str, Shard] = {}

    def shard(self, namespace: str, dim: int) -> Shard:
        shard = self.shards.get(namespace)
        if shard is None:
            shard = self.shards[namespace] = Shard(namespace, dim, k1=self._k1, b=self._b, kind=self._kind)
        return shard

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards.values())
