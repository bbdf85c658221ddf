"""Storage of guarded documents: one shard per namespace, in a main and a quarantine partition.

A shard holds a namespace's documents, its BM25 index and its FAISS index, row-aligned. Rows are
append-only; replacing or deleting a document tombstones its row, which both indexes then skip.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._bm25 import BM25Shard
from ._canonical import canonicalize
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


class LazyRows:
    """A shard's rows after a load: built from columns on first access, appendable like a list.

    Building 100k frozen ``Row`` objects (and canonicalising their texts) up front would cost more
    than the rest of a load; a query only ever touches its few dozen candidates.
    """

    __slots__ = ("_built", "_columns", "_namespace")

    def __init__(self, namespace: str, columns: dict[str, Any]) -> None:
        self._namespace = namespace
        self._columns = columns
        self._built: list[Row | None] = [None] * len(columns["id"])

    def __len__(self) -> int:
        return len(self._built)

    def __getitem__(self, i: int) -> Row:
        row = self._built[i]
        if row is None:
            c = self._columns
            row = self._built[i] = Row(
                id=c["id"][i], text=c["text"][i], canonical=canonicalize(c["text"][i]), metadata=c["metadata"][i],
                namespace=self._namespace, content_hash=c["content_hash"][i], source_url=c["source_url"][i],
                manifest_id=c["manifest_id"][i], provenance=float(c["provenance"][i]),
                features=tuple(c["features"][i].tolist()), poison=float(c["poison"][i]),
                reasons=tuple(c["reasons"][i]),
            )
        return row

    def __iter__(self) -> Iterator[Row]:
        return (self[i] for i in range(len(self._built)))

    def __bool__(self) -> bool:
        return bool(self._built)

    def append(self, row: Row) -> None:
        self._built.append(row)

    def __setitem__(self, i: int, row: Row) -> None:
        self._built[i] = row


class Shard:
    """The documents of one namespace in one partition, with their BM25 and FAISS indexes."""

    __slots__ = ("_by_hash", "_poison", "_prior_arrays", "_provenance", "_refresh_lock", "_stale", "alive", "bm25",
                 "dense", "namespace", "positions", "rows")

    def __init__(self, namespace: str, dim: int, *, k1: float, b: float, kind: IndexKind) -> None:
        self.namespace = namespace
        self.rows: list[Row] | LazyRows = []
        self.alive: list[bool] = []
        self.positions: dict[str, int] = {}
        # Row-aligned copies of the two per-document priors fusion needs, gathered per query.
        self._provenance: list[float] = []
        self._poison: list[float] = []
        self._prior_arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._by_hash: dict[str, Row] | None = None
        self._stale = True
        self._refresh_lock = threading.Lock()
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
        self.mark_stale()
        self.alive.append(True)
        self.positions[row.id] = position

    def replace_row(self, position: int, row: Row) -> None:
        """Swap a live row for a re-scored version of itself (same id, text and vector)."""
        if self.positions.get(row.id) != position:
            raise ValueError(f"row {position} does not hold {row.id!r}")
        self.rows[position] = row
        self._poison[position] = row.poison
        self.mark_stale()

    def discard(self, doc_id: str) -> Row | None:
        position = self.positions.pop(doc_id, None)
        if position is None:
            return None
        self.alive[position] = False
        self.mark_stale()
        self.bm25.remove(position)
        self.dense.remove(position)
        return self.rows[position]

    def restore(self, columns: dict[str, Any], bm25: BM25Shard, vectors: np.ndarray, index: Any = None) -> None:
        """Adopt a loaded shard's row columns and engines (see ``_persist``); the shard must be empty."""
        if self.rows:
            raise ValueError("restore() needs an empty shard")
        ids = columns["id"]
        self.rows = LazyRows(self.namespace, columns)
        self.alive = [True] * len(ids)
        self.positions = {doc_id: i for i, doc_id in enumerate(ids)}
        self._provenance = columns["provenance"].tolist()
        self._poison = columns["poison"].tolist()
        self.mark_stale()
        self.bm25 = bm25
        self.dense.restore(vectors, index)

    def mark_stale(self) -> None:
        """Drop every cache derived from the rows; the next search rebuilds what it needs."""
        self._prior_arrays = None
        self._by_hash = None
        self._stale = True

    def by_content_hash(self) -> dict[str, Row]:
        """Live rows by content hash, built once per change (``screen`` looks texts up in it)."""
        table = self._by_hash
        if table is None:
            with self._refresh_lock:
                table = self._by_hash
                if table is None:
                    rows = self.rows
                    table = self._by_hash = {rows[p].content_hash: rows[p] for p in self.positions.values()}
        return table

    def refresh(self) -> None:
        """Build what the last writes left stale (BM25 postings, priors, FAISS additions, deletion
        bitmap), once, before a search reads it. Searches run concurrently under the index's read
        lock, so the lazy builds themselves take this shard's own lock."""
        if not self._stale:
            return
        with self._refresh_lock:
            if not self._stale:
                return
            self.bm25.postings()
            self.priors(np.zeros(0, dtype=np.int64))
            self.dense.prepare()
            self._stale = False

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
