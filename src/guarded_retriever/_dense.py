"""Dense search with FAISS: normalised float32 vectors, inner product, one index per namespace.

One index per namespace is the namespace filter "inside the index": a query only ever touches its
own namespace's vectors, so no global top list exists that could be post-filtered wrongly.

The index kind follows the namespace's size unless it is forced (``GuardConfig.dense_index``):

* ``flat`` (``IndexFlatIP``, exact) up to ``ivf_threshold`` vectors (20k: about 1 ms per query);
* ``ivf`` (``IndexIVFFlat``, nlist ≈ 4·√N, nprobe 32) above it, trained when the index is built;
* ``hnsw`` (``IndexHNSWFlat``, M 32, efConstruction 100, efSearch 128) when asked for.

Deleted rows stay in the FAISS index but are masked with an ``IDSelectorBitmap`` of live rows, so
deletion never turns into post-filtering either. FAISS runs on one OpenMP thread: on these 2-core
machines two threads make single queries 1.2–4× slower (research/performance.md §2.3).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import faiss as _faiss
import numpy as np

from ._exceptions import EmbeddingError

# faiss's bundled stubs miss the SWIG search-parameter classes and selectors; treat it as untyped.
faiss: Any = _faiss

__all__ = ["DenseShard", "IndexKind", "check_query_vector", "check_vectors"]

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]

faiss.omp_set_num_threads(1)

_BRUTE_FORCE_MAX = 512
_NORM_FLOOR = float(np.sqrt(np.finfo(np.float32).tiny))  # below it, squares underflow


def check_vectors(vectors: Any, dim: int | None, n: int) -> np.ndarray:
    """Validate and L2-normalise ``n`` embedding rows; returns a C-contiguous float32 array.

    Raises:
        EmbeddingError: wrong shape or dimension, NaN/inf, or an all-zero row.
    """
    try:
        raw = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
        if np.iscomplexobj(raw):  # a cast would silently drop the imaginary part
            raise TypeError("complex values")
        with np.errstate(over="ignore", invalid="ignore"):  # out of float32 range: inf, refused below
            arr = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"embeddings are not numeric arrays: {exc}") from None
    if arr.ndim != 2 or arr.shape[0] != n:
        raise EmbeddingError(f"expected {n} embedding rows, got an array of shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise EmbeddingError(f"expected {dim}-dimensional embeddings, got {arr.shape[1]}")
    if not np.isfinite(arr).all():
        raise EmbeddingError("embeddings contain NaN or infinite values (or values beyond float32)")
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
    extreme = ~np.isfinite(norms[:, 0]) | (norms[:, 0] < _NORM_FLOOR)
    if extreme.any():
        # A finite row whose squares overflow (or underflow) float32: scale it by its largest
        # component first, or it would come out as zeros (or be refused as all zeros).
        peak = np.abs(arr[extreme]).max(axis=1, keepdims=True)
        if (peak == 0).any():
            raise EmbeddingError("an embedding is all zeros and cannot be normalised")
        arr = arr.copy()
        with np.errstate(under="ignore"):
            arr[extreme] = arr[extreme] / peak
            norms[extreme] = np.linalg.norm(arr[extreme], axis=1, keepdims=True)
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def check_query_vector(vector: Any, dim: int | None) -> np.ndarray:
    """:func:`check_vectors` for one query embedding (any shape holding ``dim`` values).

    Every search runs this, so the usual case, a finite real vector of a sane norm, takes a few
    numpy calls (each costs microseconds more when the caches are cold); anything else goes
    through :func:`check_vectors`, which refuses or rescales it. The result is bit for bit the
    same either way: the norm is summed in float32 by the same reduction.
    """
    try:
        arr = vector if isinstance(vector, np.ndarray) else np.asarray(vector)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"the query embedding is not a numeric array: {exc}") from None
    if arr.dtype.kind == "f" and (dim is None or arr.size == dim) and arr.size:
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            row = arr.astype(np.float32).reshape(-1)
            norm = np.sqrt(np.add.reduce(row * row))
        # NaN or inf anywhere makes the norm non-finite; so does a float32 overflow of the squares.
        if np.isfinite(norm) and norm >= _NORM_FLOOR:
            out: np.ndarray = row / norm
            return out
    checked: np.ndarray = check_vectors(arr.reshape(1, -1), dim, 1)[0]
    return checked


class DenseShard:
    """The vectors of one namespace and the FAISS index over them."""

    __slots__ = ("_alive_bits", "_dead", "_index", "_index_rows", "_n", "_vectors", "dim", "ivf_threshold",
                 "kind")

    def __init__(self, dim: int, kind: IndexKind = "auto", ivf_threshold: int = 20_000) -> None:
        self.dim = dim
        self.kind = kind
        self.ivf_threshold = ivf_threshold
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._n = 0
        self._dead: set[int] = set()
        self._index: Any = None
        self._index_rows = 0  # rows already added to self._index
        self._alive_bits: np.ndarray | None = None  # FAISS's deletion bitmap, rebuilt after a change

    def __len__(self) -> int:
        return self._n

    @property
    def vectors(self) -> np.ndarray:
        """The stored (normalised) vectors, one row per document row."""
        return self._vectors[: self._n]

    def add(self, vectors: np.ndarray) -> None:
        """Append already-validated, normalised rows."""
        need = self._n + len(vectors)
        if need > len(self._vectors):
            grown = np.zeros((max(need, 2 * len(self._vectors), 64), self.dim), dtype=np.float32)
            grown[: self._n] = self._vectors[: self._n]
            self._vectors = grown
        self._vectors[self._n : need] = vectors
        self._n = need
        self._alive_bits = None

    def remove(self, row: int) -> None:
        self._dead.add(row)
        self._alive_bits = None

    def _brute_force(self) -> bool:
        """A handful of vectors (a small tenant, a quarantine): one matrix product beats FAISS."""
        return self._n <= _BRUTE_FORCE_MAX and self.kind in ("auto", "flat")

    def _alive_bitmap(self) -> np.ndarray:
        """FAISS's deletion bitmap, built once per change, not per query (it is O(N))."""
        if self._alive_bits is None:
            alive = np.ones(self._n, dtype=bool)
            alive[list(self._dead)] = False
            self._alive_bits = np.packbits(alive, bitorder="little")
        return self._alive_bits

    def prepare(self) -> None:
        """Bring the FAISS index and the deletion bitmap up to date (see ``Shard.refresh``)."""
        if not self._brute_force():
            self._ensure_index()
            if self._dead:
                self._alive_bitmap()

    def dead_rows(self) -> frozenset[int]:
        return frozenset(self._dead)

    def replace(self, row: int, vector: np.ndarray) -> None:
        """Overwrite one row's (validated, normalised) vector; the FAISS index is rebuilt lazily."""
        if not self._vectors.flags.writeable:  # a read-only view on the verified bytes after a load
            self._vectors = np.array(self._vectors)
        self._vectors[row] = vector
        self._index = None

    def trained_index(self) -> Any:
        """The up-to-date IVF / HNSW index worth saving, or ``None`` for a flat or brute-force one."""
        if self.resolved_kind() == "flat" or self._brute_force() or not self._n:
            return None  # an empty shard (a namespace's unused quarantine) has nothing to train on
        return self._ensure_index()

    def restore(self, vectors: np.ndarray, index: Any = None) -> None:
        """Adopt loaded vectors (possibly read-only) and, when given, their saved FAISS index."""
        self._vectors = vectors
        self._n = len(vectors)
        self._dead = set()
        self._alive_bits = None
        self._index = index if index is not None and index.ntotal == self._n else None
        self._index_rows = self._n if self._index is not None else 0

    def resolved_kind(self) -> Literal["flat", "ivf", "hnsw"]:
        if self.kind != "auto":
            return self.kind
        return "ivf" if self._n > self.ivf_threshold else "flat"

    def _ensure_index(self) -> Any:
        kind = self.resolved_kind()
        current = self._index
        if current is not None and _kind_of(current) != kind:
            current = None  # the namespace outgrew flat: rebuild as IVF
        if current is None:
            current = self._build(kind)
            self._index_rows = 0
        if self._index_rows < self._n:
            current.add(self._vectors[self._index_rows : self._n])
            self._index_rows = self._n
        self._index = current
        return current

    def _build(self, kind: str) -> Any:
        if kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 100
            index.hnsw.efSearch = 128
            return index
        nlist = max(1, min(int(4 * math.sqrt(self._n)), self._n // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = self.vectors
        if len(sample) > 64 * nlist:  # k-means needs ~40–64 points per centroid, not all of them
            sample = sample[np.random.default_rng(0).choice(len(sample), 64 * nlist, replace=False)]
        index.train(sample)
        index.nprobe = min(32, nlist)
        return index

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` live ``(rows, cosines)`` for one normalised query vector."""
        live = self._n - len(self._dead)
        if live <= 0 or k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        k = min(k, live)
        if self._brute_force():
            sims = self._vectors[: self._n] @ query
            if self._dead:
                sims[list(self._dead)] = -np.inf
            top = np.argpartition(-sims, k - 1)[:k] if k < self._n else np.arange(self._n)
            top = top[np.lexsort((top, -sims[top]))]
            return top.astype(np.int64), sims[top]
        index = self._ensure_index()
        q = query.reshape(1, -1)
        if self._dead:
            bits = self._alive_bitmap()
            # `bits` must outlive the search: FAISS keeps a raw pointer to it.
            params = _search_params(index, faiss.IDSelectorBitmap(self._n, faiss.swig_ptr(bits)))
            scores, rows = index.search(q, k, params=params)
        else:
            scores, rows = index.search(q, k)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep]

    def search_many(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` live ``(rows, cosines)`` for each of several normalised vectors, best first.

        Shapes ``(n, k)``; where fewer than ``k`` rows are alive the tail holds row -1 and cosine
        -inf. Ingest calls it once per batch for the neighbourhood detectors.
        """
        n = len(queries)
        live = self._n - len(self._dead)
        rows_out = np.full((n, k), -1, dtype=np.int64)
        sims_out = np.full((n, k), -np.inf, dtype=np.float32)
        if live <= 0 or k <= 0 or not n:
            return rows_out, sims_out
        kk = min(k, live)
        if self._brute_force() or self.resolved_kind() == "flat":
            # One matrix product; FAISS's flat search would take the same BLAS path.
            sims = queries @ self._vectors[: self._n].T
            if self._dead:
                sims[:, list(self._dead)] = -np.inf
            if kk < self._n:
                top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            else:
                top = np.tile(np.arange(self._n), (n, 1))
            top_sims = np.take_along_axis(sims, top, axis=1)
            order = np.argsort(-top_sims, axis=1, kind="stable")
            rows_out[:, :kk] = np.take_along_axis(top, order, axis=1)
            sims_out[:, :kk] = np.take_along_axis(top_sims, order, axis=1)
        else:
            index = self._ensure_index()
            q = np.ascontiguousarray(queries, dtype=np.float32)
            if self._dead:
                bits = self._alive_bitmap()
                params = _search_params(index, faiss.IDSelectorBitmap(self._n, faiss.swig_ptr(bits)))
                scores, rows = index.search(q, kk, params=params)
            else:
                scores, rows = index.search(q, kk)
            rows_out[:, :kk] = rows
            sims_out[:, :kk] = np.where(rows >= 0, scores, -np.inf)
        return rows_out, sims_out

    def similarity(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact cosine of the query with the given rows (for candidates found by BM25 only)."""
        sims: np.ndarray = self._vectors[rows] @ query
        return sims


def _kind_of(index: Any) -> str:
    if isinstance(index, faiss.IndexIVFFlat):
        return "ivf"
    if isinstance(index, faiss.IndexHNSWFlat):
        return "hnsw"
    return "flat"


def _search_params(index: Any, selector: Any) -> Any:
    if isinstance(index, faiss.IndexIVFFlat):
        return faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe)
    if isinstance(index, faiss.IndexHNSWFlat):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=index.hnsw.efSearch)
    return faiss.SearchParameters(sel=selector)
