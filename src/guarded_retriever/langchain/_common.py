"""What the LangChain faces share: namespace binding, the search path, and hit → ``Document``."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.runnables.config import run_in_executor

from .._exceptions import ConfigError, NamespaceError, NamespaceViolation
from .._index import GuardedIndex, Hit, SearchResult, _check_query
from .._namespace import Namespace
from ._stores import Nomination, StoreSide

__all__ = [
    "GUARD_KEY",
    "GuardedSearch",
    "NamespaceLike",
    "bind_namespace",
    "copy_metadata",
    "hit_document",
    "resolve_namespace",
]

logger = logging.getLogger("guarded_retriever")

NamespaceLike = Namespace | Mapping[str, Any] | str

GUARD_KEY = "guarded_retriever"
"""The one metadata entry under which retrievers report a hit's scores, reasons and provenance."""


def bind_namespace(index: GuardedIndex, value: NamespaceLike) -> str:
    """Validate a namespace against the index's schema; its canonical key (fails closed)."""
    return index.pipeline.schema.parse(value).key


def resolve_namespace(
    index: GuardedIndex, bound: str | None, requested: NamespaceLike | None
) -> str:
    """The namespace of one request: the bound one, or the one asked for when nothing is bound.

    A request may repeat its object's bound namespace but never name another: an object bound to
    tenant A that is asked for tenant B raises instead of answering for either.

    Raises:
        NamespaceError: no namespace at all, a malformed one, or one that contradicts the binding.
    """
    if requested is None:
        if bound is None:
            raise NamespaceError(
                "no namespace: bind one at construction or with for_namespace(), "
                "or pass namespace= with the call"
            )
        return bound
    key = bind_namespace(index, requested)
    if bound is not None and key != bound:
        raise NamespaceError(f"bound to namespace {bound!r}; refusing a request for {key!r}")
    return key


_ATOMS = frozenset({str, int, float, bool, type(None)})


def copy_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy, so that neither the caller's documents nor the index's copy can change the
    other later; flat metadata of immutable values (the usual kind) needs only a new dict, and
    deepcopy is slow."""
    if all(type(v) in _ATOMS for v in metadata.values()):
        return dict(metadata)
    return copy.deepcopy(dict(metadata))


def hit_document(
    hit: Hit,
    *,
    score: bool = True,
    guard_key: str | None = GUARD_KEY,
    store_relevance: float | None = None,
) -> Document:
    """A hit as a LangChain ``Document`` (``id`` set, the user's metadata deep-copied).

    With ``score`` the metadata gets ``score``, the fused score (the LangChain convention); with
    ``guard_key`` one entry under that key with the per-signal scores, reasons and provenance.
    Without either the metadata is exactly the user's, as a vector store must return it.
    """
    metadata = copy_metadata(hit.metadata)
    if score:
        metadata["score"] = hit.fused
    if guard_key is not None:
        scores = hit.scores
        if store_relevance is not None:
            scores["store"] = round(store_relevance, 6)
        metadata[guard_key] = {
            "namespace": hit.namespace,
            "scores": scores,
            "reasons": list(hit.reasons),
            "content_hash": hit.content_hash,
            "source_url": hit.source_url,
            "manifest_id": hit.manifest_id,
        }
    return Document(page_content=hit.text, metadata=metadata, id=hit.id)


def _vector(raw: Any) -> list[float]:
    return [float(x) for x in np.asarray(raw, dtype=np.float64).reshape(-1)]


class GuardedSearch:
    """One guarded search path: the index alone (its FAISS shards), or the index plus a base store.

    Args:
        index: the guard's index; it holds BM25, vectors, provenance and poison priors.
        side: the base store as the dense side, or ``None`` for the index's own FAISS.
    """

    def __init__(self, index: GuardedIndex, side: StoreSide | None = None) -> None:
        self.index = index
        self.side = side

    def _pool(self, k: int) -> int:
        # GuardedIndex.search asks the dense side for max(candidates, k) ids.
        return max(self.index.config.candidates, k)

    def _embedder(self) -> Any:
        if self.index.embedder is None:
            raise ConfigError("the index has no embedder; a base store needs one to be queried")
        return self.index.embedder

    def _check(self, key: str, nomination: Nomination) -> None:
        if nomination.foreign:
            logger.warning(
                "namespace violation blocked: the base store's namespace filter returned "
                "%d foreign documents for %r",
                len(nomination.foreign),
                key,
            )
            if self.index.config.strict_namespaces:
                raise NamespaceViolation(
                    key, "another namespace (base store)", nomination.foreign[0]
                )

    def _search(
        self, query: str, key: str, k: int, vector: list[float], nomination: Nomination
    ) -> SearchResult:
        ids = nomination.ids
        return self.index.search(
            query, namespace=key, k=k, query_vector=vector, dense=lambda _vector, n: ids[:n]
        )

    def run(self, query: str, key: str, k: int) -> tuple[SearchResult, Nomination | None]:
        """Search namespace ``key``; the result, and what the base store nominated (if any)."""
        if self.side is None:
            return self.index.search(query, namespace=key, k=k), None
        _check_query(query, self.index.config.max_query_chars)  # before the embedder sees it
        vector = _vector(self._embedder().embed_query(query))
        nomination = self.side.nominate(key, query, vector, self._pool(k))
        self._check(key, nomination)
        return self._search(query, key, k, vector, nomination), nomination

    async def arun(self, query: str, key: str, k: int) -> tuple[SearchResult, Nomination | None]:
        """:meth:`run` without blocking the event loop.

        The base store is queried with its native async methods; embedding, BM25, FAISS and the
        guard's scoring are CPU work and run in the default executor.
        """
        if self.side is None:
            result = await run_in_executor(
                None, partial(self.index.search, query, namespace=key, k=k)
            )
            return result, None
        _check_query(query, self.index.config.max_query_chars)
        embedder = self._embedder()
        if hasattr(embedder, "aembed_query"):
            raw = await embedder.aembed_query(query)
        else:
            raw = await run_in_executor(None, embedder.embed_query, query)
        vector = _vector(raw)
        nomination = await self.side.anominate(key, query, vector, self._pool(k))
        self._check(key, nomination)
        result = await run_in_executor(None, self._search, query, key, k, vector, nomination)
        return result, nomination
