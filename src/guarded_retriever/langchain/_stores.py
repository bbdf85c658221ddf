"""Any LangChain ``VectorStore`` as the dense side of the guard.

The guard never trusts a base store with isolation. Each document the guard writes to a store gets

* a store id derived from its namespace and its id (:func:`store_id`, a UUIDv5, which every store
  accepts, Qdrant included), so two tenants' ``"doc-1"`` never overwrite each other;
* one reserved metadata entry, :data:`STORE_TAG` ``{"namespace": ..., "id": ...}``, which lets a
  store that can filter on metadata pre-filter by namespace.

At query time the store only *nominates* candidates (:meth:`StoreSide.nominate`). Every document it
returns is asserted to carry the request's namespace and the store id derived for it; the survivors'
ids go to :meth:`GuardedIndex.search`, which ignores any id it does not hold in that namespace and
recomputes every score from its own vectors. Where the store cannot pre-filter, the guard
over-fetches, and doubles the fetch until it has enough candidates of the request's namespace or
the store has no more (LangChain's FAISS wrapper instead filters a fixed ``fetch_k=20`` and starves
small tenants, langchain-ai/langchain#28413).

Scores mean different things in different stores: cosine similarity in ``InMemoryVectorStore``, a
distance or a similarity in Qdrant depending on the collection, raw L2 distance in LangChain's
FAISS.
A :class:`StoreProfile` maps each store's raw score onto a relevance in [0, 1] where higher is
better; it orders the nominations and is reported as the ``store`` score of a hit.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.documents import Document
from langchain_core.runnables.config import run_in_executor
from langchain_core.vectorstores import VectorStore

from .._exceptions import ConfigError
from .._ingest import GuardDocument
from .._rwlock import lock_for

__all__ = [
    "STORE_TAG",
    "Nomination",
    "StoreProfile",
    "StoreSide",
    "cosine_relevance",
    "distance_relevance",
    "inner_product_relevance",
    "profile_for",
    "register_store_profile",
    "store_id",
]

logger = logging.getLogger("guarded_retriever")

STORE_TAG = "_guarded"
"""The metadata key the guard reserves in documents it writes to a base store."""

# A fixed UUID namespace for store ids, so the same (namespace, id) maps to the same point in every
# process and an upsert lands on the point it replaces.
_STORE_ID_NAMESPACE = uuid.UUID("3c0d1a4e-6f21-5b7e-9a55-2f1de2a7c0b4")


def store_id(namespace: str, doc_id: str) -> str:
    """The id under which the guard writes ``doc_id`` of ``namespace`` to a base store."""
    return str(uuid.uuid5(_STORE_ID_NAMESPACE, f"{namespace}\x1f{doc_id}"))


def cosine_relevance(score: float) -> float:
    """A cosine similarity in [-1, 1] (higher is better) onto [0, 1]."""
    return min(1.0, max(0.0, (score + 1.0) / 2.0))


def distance_relevance(score: float) -> float:
    """A distance in [0, ∞) (lower is better: L2, cosine distance, Manhattan) onto (0, 1]."""
    return 1.0 / (1.0 + max(0.0, score))


def inner_product_relevance(score: float) -> float:
    """An unbounded inner product (higher is better) onto (0, 1], through the logistic function."""
    if score >= 0:
        return 1.0 / (1.0 + math.exp(-score))
    e = math.exp(score)
    return e / (1.0 + e)


@dataclass(frozen=True, slots=True)
class StoreProfile:
    """How the guard reads one kind of base vector store.

    Args:
        name: a label for logs and tracing (``"InMemoryVectorStore: cosine similarity"``).
        relevance: maps the store's raw ``similarity_search_with_score`` score onto [0, 1], higher
            is better (this carries both the direction and the scale); ``None`` when the scores
            mean nothing comparable and only the store's order counts.
        namespace_filter: given a namespace key, the search keyword arguments that make the store
            return that namespace's documents only; ``None`` when the store cannot pre-filter (the
            guard then over-fetches and filters itself).
    """

    name: str
    relevance: Callable[[float], float] | None = None
    namespace_filter: Callable[[str], dict[str, Any]] | None = None


ProfileFactory = Callable[[VectorStore], StoreProfile]

_PROFILES: dict[str, ProfileFactory] = {}


def register_store_profile(class_name: str, factory: ProfileFactory) -> None:
    """Teach the guard a store class, by its ``__name__`` (subclasses inherit it).

    Registering by name means the guard never imports an optional store package to recognise it.
    """
    _PROFILES[class_name] = factory


def profile_for(store: VectorStore) -> StoreProfile:
    """The registered profile of ``store``'s class (or of its nearest registered base class).

    An unknown store that implements ``_select_relevance_score_fn`` is read through it; any other is
    read by rank only and never pre-filtered.
    """
    for cls in type(store).__mro__:
        factory = _PROFILES.get(cls.__name__)
        if factory is not None:
            return factory(store)
    name = type(store).__name__
    if type(store)._select_relevance_score_fn is not VectorStore._select_relevance_score_fn:
        try:
            fn = store._select_relevance_score_fn()
        except (NotImplementedError, ValueError):
            pass
        else:
            return StoreProfile(
                f"{name}: its own relevance function", relevance=lambda s: min(1.0, max(0.0, fn(s)))
            )
    return StoreProfile(f"{name}: rank only")


def _tag_of(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    tag = metadata.get(STORE_TAG)
    return tag if isinstance(tag, Mapping) else {}


def _in_memory(store: VectorStore) -> StoreProfile:
    def namespace_filter(key: str) -> dict[str, Any]:
        return {"filter": lambda doc: _tag_of(doc.metadata).get("namespace") == key}

    return StoreProfile(
        "InMemoryVectorStore: cosine similarity", cosine_relevance, namespace_filter
    )


def _qdrant(store: VectorStore) -> StoreProfile:
    from qdrant_client import models  # present whenever a QdrantVectorStore exists

    distance = getattr(store, "distance", models.Distance.COSINE)
    relevance = {
        models.Distance.COSINE: cosine_relevance,
        models.Distance.DOT: inner_product_relevance,
        models.Distance.EUCLID: distance_relevance,
        models.Distance.MANHATTAN: distance_relevance,
    }.get(distance)
    field_key = f"{getattr(store, 'metadata_payload_key', 'metadata')}.{STORE_TAG}.namespace"

    def namespace_filter(key: str) -> dict[str, Any]:
        condition = models.FieldCondition(key=field_key, match=models.MatchValue(value=key))
        return {"filter": models.Filter(must=[condition])}

    return StoreProfile(
        f"QdrantVectorStore: {getattr(distance, 'value', distance)}", relevance, namespace_filter
    )


def _faiss(store: VectorStore) -> StoreProfile:
    # langchain-community's FAISS filters *after* a fixed fetch_k, so it is not given a namespace
    # filter: the guard's own progressive over-fetch is the reliable path.
    strategy = str(
        getattr(getattr(store, "distance_strategy", None), "value", "EUCLIDEAN_DISTANCE")
    )
    if strategy == "MAX_INNER_PRODUCT":
        return StoreProfile("FAISS: inner product", inner_product_relevance)
    return StoreProfile(f"FAISS: {strategy.lower()}", distance_relevance)


register_store_profile("InMemoryVectorStore", _in_memory)
register_store_profile("QdrantVectorStore", _qdrant)
register_store_profile("FAISS", _faiss)


@dataclass(slots=True)
class Nomination:
    """What the base store nominated for one query, after the namespace assert."""

    ids: list[str] = field(default_factory=list)
    """Guard ids of the request's namespace, best first, each once."""
    relevance: dict[str, float] = field(default_factory=dict)
    """The store's adapted relevance per nominated id (absent for rank-only stores)."""
    foreign: list[str] = field(default_factory=list)
    """Store ids of documents a *pre-filtered* search returned from elsewhere: violations."""
    fetched: int = 0
    """How many documents the store returned in total, over every round."""


class _Collector:
    """Accumulates rounds of store results into a :class:`Nomination`."""

    def __init__(self, key: str, n: int, profile: StoreProfile, prefiltered: bool) -> None:
        self.key, self.n, self.profile, self.prefiltered = key, n, profile, prefiltered
        self.nomination = Nomination()

    def take(self, results: Sequence[tuple[Document, float | None]]) -> None:
        """Replace the nomination with this round's (each round re-fetches from the top)."""
        out = Nomination(fetched=self.nomination.fetched + len(results))
        ranked: list[tuple[float, int, str]] = []
        seen: set[str] = set()
        relevance = self.profile.relevance
        for rank, (doc, score) in enumerate(results):
            tag = _tag_of(doc.metadata)
            doc_id = tag.get("id")
            # Qdrant reports its point id in metadata["_id"] rather than in Document.id.
            sid = doc.id if doc.id is not None else doc.metadata.get("_id")
            if (
                tag.get("namespace") != self.key
                or not isinstance(doc_id, str)
                or (sid is not None and str(sid) != store_id(self.key, doc_id))
            ):
                if self.prefiltered:
                    out.foreign.append(str(sid) if sid is not None else "<no id>")
                continue
            if doc_id in seen:
                continue
            seen.add(doc_id)
            rel = relevance(float(score)) if relevance is not None and score is not None else None
            if rel is not None:
                out.relevance[doc_id] = rel
            ranked.append((-(rel if rel is not None else 0.0), rank, doc_id))
        # By adapted relevance, then by the store's own order (the only order of rank-only stores).
        ranked.sort()
        out.ids = [i for _, _, i in ranked]
        self.nomination = out

    def next_fetch(self, fetch: int, returned: int, max_fetch: int) -> int | None:
        """The next, larger fetch size, or ``None`` when this round settled it."""
        if len(self.nomination.ids) >= self.n or returned < fetch or fetch >= max_fetch:
            return None
        return min(max_fetch, fetch * 2)


class StoreSide:
    """A base vector store as the guard's dense side: writes, deletes and nominations.

    Args:
        store: the base store.
        profile: its score and filter profile (by default :func:`profile_for`).
        query_by_vector: query with the guard's query vector (one embedding per query) instead of
            the query text; only right when the store embeds with the guard's embedder.
        over_fetch: for a store that cannot pre-filter, the first fetch is ``n × over_fetch``.
        max_fetch: the largest fetch the progressive over-fetch may reach.
    """

    def __init__(
        self,
        store: VectorStore,
        *,
        profile: StoreProfile | None = None,
        query_by_vector: bool = False,
        over_fetch: int = 4,
        max_fetch: int = 1000,
    ) -> None:
        if over_fetch < 1 or max_fetch < 1:
            raise ConfigError("over_fetch and max_fetch must be at least 1")
        self.store = store
        self.profile = profile if profile is not None else profile_for(store)
        self.query_by_vector = query_by_vector and hasattr(
            store, "similarity_search_with_score_by_vector"
        )
        self.over_fetch = over_fetch
        self.max_fetch = max_fetch

    # -- writes ---------------------------------------------------------------------------------

    @staticmethod
    def _documents(key: str, docs: Sequence[GuardDocument]) -> tuple[list[Document], list[str]]:
        ids = [store_id(key, d.id) for d in docs]
        out = [
            Document(
                page_content=d.text,
                id=sid,
                metadata={**d.metadata, STORE_TAG: {"namespace": key, "id": d.id}},
            )
            for d, sid in zip(docs, ids, strict=True)
        ]
        return out, ids

    @staticmethod
    def _check_ids(returned: Sequence[Any], ids: list[str], store: VectorStore) -> None:
        # The namespace assert at query time needs the store to keep the ids it is given.
        if [str(i) for i in returned] != ids:
            raise ConfigError(
                f"{type(store).__name__} did not keep the ids it was given; "
                "the guard cannot wrap a store that assigns its own ids"
            )

    # Every call into the store takes the store's lock (see ``lock_for``): queries shared,
    # writes exclusive, so an in-process store (InMemoryVectorStore: a dict) is never read while
    # another thread writes it. Async calls therefore run the sync methods in the executor,
    # as LangChain's own defaults do: a store's native coroutine would either run its dict
    # work unlocked on the event loop or hold a thread lock across an await.

    def write(self, key: str, docs: Sequence[GuardDocument]) -> None:
        if docs:
            documents, ids = self._documents(key, docs)
            with lock_for(self.store).write():
                returned = self.store.add_documents(documents, ids=ids)
            self._check_ids(returned, ids, self.store)

    def remove(self, key: str, ids: Sequence[str]) -> None:
        if ids:
            with lock_for(self.store).write():
                self.store.delete([store_id(key, i) for i in ids])

    async def aremove(self, key: str, ids: Sequence[str]) -> None:
        await run_in_executor(None, self.remove, key, ids)

    # -- reads ----------------------------------------------------------------------------------

    def _plan(self, key: str, n: int) -> tuple[dict[str, Any], int, _Collector]:
        nf = self.profile.namespace_filter
        kwargs = nf(key) if nf is not None else {}
        fetch = min(self.max_fetch, n if nf is not None else n * self.over_fetch)
        return kwargs, max(fetch, 1), _Collector(key, n, self.profile, prefiltered=nf is not None)

    def _search(
        self, query: str, vector: list[float], fetch: int, kwargs: dict[str, Any]
    ) -> list[tuple[Document, float | None]]:
        store: Any = self.store
        with lock_for(store).read():
            if self.query_by_vector:
                return list(store.similarity_search_with_score_by_vector(vector, k=fetch, **kwargs))
            try:
                return list(store.similarity_search_with_score(query, k=fetch, **kwargs))
            except NotImplementedError:
                return [(d, None) for d in store.similarity_search(query, k=fetch, **kwargs)]

    def nominate(self, key: str, query: str, vector: list[float], n: int) -> Nomination:
        """Up to ``n`` ids of namespace ``key`` the store finds nearest, best first."""
        kwargs, fetch, collector = self._plan(key, n)
        while True:
            results = self._search(query, vector, fetch, kwargs)
            collector.take(results)
            next_fetch = collector.next_fetch(fetch, len(results), self.max_fetch)
            if next_fetch is None:
                return collector.nomination
            fetch = next_fetch

    async def anominate(self, key: str, query: str, vector: list[float], n: int) -> Nomination:
        """:meth:`nominate` in the executor (under the store's lock, see ``write``)."""
        return await run_in_executor(None, self.nominate, key, query, vector, n)
