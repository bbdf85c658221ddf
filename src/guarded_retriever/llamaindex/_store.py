"""The state a :class:`GuardedRetriever` shares with its namespace views: the core, the base stores,
and what the adapter knows beyond the core (original nodes, store ids).

The core (:class:`~guarded_retriever.GuardedIndex`) is the source of truth: it holds BM25, the
vectors, provenance and poison priors and the ledger, and it recomputes every score. A LlamaIndex
vector store, when given, only *nominates* dense candidates: its ids are mapped back to document
ids through this namespace's own table, so an id the store returns for another namespace, or for a
node nobody ingested through the guard, can never become a hit. The store also gets a positive
``EQ`` filter on every namespace key, never ``!=`` or ``nin``: LlamaIndex's reference evaluator
lets a node that *lacks* the key match those (research/ecosystem.md §2.5).

One node id can live in several namespaces, but a store has one id space (and Qdrant accepts only
UUIDs), so each copy in a store gets a UUID derived from ``(namespace, node id)``. Because the ids
are derived, the store-id tables can be rebuilt from the core alone (:meth:`GuardedStores.adopt`),
and a revocation can find every copy of a revoked document (:meth:`GuardedStores.purge`).

:meth:`GuardedIndex.revoke` knows nothing of LlamaIndex stores, so every ``GuardedStores`` registers
itself with its index: the first one adds a revocation listener (``index.add_revoke_listener``) so
that a revocation, whether called on the core or on a retriever, also deletes the removed documents'
copies from every registered store and forgets them in the shelves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.schema import BaseNode, MetadataMode, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)

from .. import ConfigError, GuardDocument, GuardedIndex, IngestReport, Namespace, SearchResult
from .._incident import RevocationReport
from .._rwlock import lock_for
from ._nodes import guarded_text, is_plain

__all__ = ["STORE_ID_KEY", "GuardedStores", "Nominated", "store_id"]

logger = logging.getLogger("guarded_retriever.llamaindex")
R = TypeVar("R")

STORE_ID_KEY = "guarded_retriever_id"
"""Metadata key of a store copy that names the node it copies (store copies have UUID ids)."""
_POISON_KEY = "guarded_retriever_poison"
_REASONS_KEY = "guarded_retriever_reasons"
# A fixed UUID namespace for store ids; changing it orphans every copy already in a store.
_ID_NAMESPACE = uuid.UUID("5b8f4a8e-2f7c-4d55-9a3e-6f1d0c9b7e21")


def store_id(namespace: str, node_id: str) -> str:
    """The id of a node's copy in a base store: a UUID of ``(namespace key, node id)``."""
    # "\x00" cannot occur in a namespace key, so the pair is read back unambiguously.
    return str(uuid.uuid5(_ID_NAMESPACE, f"{namespace}\x00{node_id}"))


# The attribute under which an index keeps the stores that want to hear of its revocations.
_WATCHERS = "_guarded_retriever_llamaindex_stores"
_watch_lock = threading.Lock()


def _watch_revocations(stores: GuardedStores) -> None:
    """Have ``stores.index.revoke`` purge ``stores`` too (held weakly: it may be dropped)."""
    index = stores.index
    with _watch_lock:
        watchers: weakref.WeakSet[GuardedStores] | None = index.__dict__.get(_WATCHERS)
        if watchers is None:
            watchers = weakref.WeakSet()
            registered = watchers

            def purge_everywhere(report: RevocationReport) -> None:
                failed: BaseException | None = None
                for watcher in list(registered):
                    try:
                        watcher.purge(report.removed)
                    except Exception as exc:  # the core is purged: clean the other stores anyway
                        logger.exception("revocation: could not delete the revoked copies from a store")
                        failed = failed or exc
                if failed is not None:
                    raise failed

            index.__dict__[_WATCHERS] = watchers
            index.add_revoke_listener(purge_everywhere)
        watchers.add(stores)


@dataclass(slots=True)
class _Shelf:
    """What the adapter holds for one namespace besides the core's rows."""

    nodes: dict[str, BaseNode] = field(default_factory=dict)
    """The nodes as given (without embeddings) that the core's rows cannot rebuild, so hits come
    back with their relationships, templates and classes; plain ``TextNode`` objects are not kept."""
    in_store: dict[str, str] = field(default_factory=dict)
    """Store id → node id of every copy in the base vector store: the fence for nominations."""
    in_quarantine: set[str] = field(default_factory=set)
    """Node ids with a copy in the quarantine store."""


@dataclass(slots=True)
class _StoreWrites:
    """The store writes one ingest batch calls for, worked out under the lock, done after it."""

    main: list[TextNode] = field(default_factory=list)
    quarantine: list[TextNode] = field(default_factory=list)
    drop_main: list[str] = field(default_factory=list)
    drop_quarantine: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Nominated:
    """Dense candidates fetched ahead of a search (the async path awaits the store first)."""

    ids: list[str]
    asked: int
    complete: bool
    """The store returned fewer than asked: it has no more for this namespace."""


def _overrides(store: BasePydanticVectorStore, name: str) -> bool:
    return getattr(type(store), name) is not getattr(BasePydanticVectorStore, name)


class GuardedStores:
    """A :class:`GuardedIndex`, an embed model, and optional base and quarantine vector stores.

    Args:
        index: the core; every add goes through its guard, every search through its fusion.
        embed_model: embeds queries, and nodes from their ``MetadataMode.EMBED`` content (as
            ``VectorStoreIndex`` does).
        vector_store: the dense side; ``None`` uses the core's own FAISS shards.
        quarantine_store: receives copies of quarantined nodes, for review; ``None`` keeps them
            only in the core's quarantine partition.
        namespace_filters: send ``EQ`` filters on the namespace keys with every store query. Turn
            it off for stores that reject filters; nominations are then over-fetched and fenced.
        native_async: await the stores' ``aquery``/``async_add``/``adelete_nodes``. ``None``
            does so where the store class overrides them, and otherwise runs the sync method in a
            worker thread (the base class's defaults would block the event loop).
        max_fetch: the most candidates one search asks the store for while over-fetching.
    """

    def __init__(
        self,
        index: GuardedIndex,
        embed_model: BaseEmbedding,
        *,
        vector_store: BasePydanticVectorStore | None = None,
        quarantine_store: BasePydanticVectorStore | None = None,
        namespace_filters: bool = True,
        native_async: bool | None = None,
        max_fetch: int = 1000,
    ) -> None:
        if not isinstance(index, GuardedIndex):
            raise ConfigError(f"index must be a GuardedIndex, got {type(index).__name__}")
        if not isinstance(embed_model, BaseEmbedding):
            raise ConfigError("embed_model must be a LlamaIndex BaseEmbedding (it is never taken "
                              f"from Settings), got {type(embed_model).__name__}")
        for name, store in (("vector_store", vector_store), ("quarantine_store", quarantine_store)):
            if store is not None and not isinstance(store, BasePydanticVectorStore):
                raise ConfigError(
                    f"{name} must be a LlamaIndex vector store, got {type(store).__name__}")
        if vector_store is not None and vector_store is quarantine_store:
            raise ConfigError("the quarantine store must not be the base vector store")
        if not isinstance(max_fetch, int) or max_fetch < 1:
            raise ConfigError(f"max_fetch must be a positive int, got {max_fetch!r}")
        self.index = index
        self.embed_model = embed_model
        self.vector_store = vector_store
        self.quarantine_store = quarantine_store
        self.namespace_filters = namespace_filters
        self.native_async = native_async
        self.max_fetch = max_fetch
        self.shelves: dict[str, _Shelf] = {}
        self._lock = threading.Lock()
        _watch_revocations(self)

    def parse(self, namespace: Any) -> Namespace:
        return self.index.pipeline.schema.parse(namespace)

    def _native(self, store: BasePydanticVectorStore, method: str) -> bool:
        return self.native_async if self.native_async is not None else _overrides(store, method)

    # -- ingest ---------------------------------------------------------------------------------

    @staticmethod
    def check_nodes(nodes: Sequence[Any]) -> list[BaseNode]:
        out = list(nodes)
        for node in out:
            if not isinstance(node, BaseNode):
                raise ConfigError(f"expected LlamaIndex nodes, got {type(node).__name__}")
        return out

    @staticmethod
    def _to_embed(nodes: Sequence[BaseNode]) -> list[int]:
        # Nodes that arrive with an embedding (from an IngestionPipeline, say) keep it, as in
        # VectorStoreIndex; the rest are embedded from their EMBED-mode content.
        return [i for i, n in enumerate(nodes) if n.embedding is None]

    def embed_nodes(self, nodes: Sequence[BaseNode]) -> list[Embedding]:
        todo = self._to_embed(nodes)
        fresh = self.embed_model.get_text_embedding_batch(
            [nodes[i].get_content(metadata_mode=MetadataMode.EMBED) for i in todo]) if todo else []
        return self._merge(nodes, todo, fresh)

    async def aembed_nodes(self, nodes: Sequence[BaseNode]) -> list[Embedding]:
        todo = self._to_embed(nodes)
        fresh = await self.embed_model.aget_text_embedding_batch(
            [nodes[i].get_content(metadata_mode=MetadataMode.EMBED) for i in todo]) if todo else []
        return self._merge(nodes, todo, fresh)

    @staticmethod
    def _merge(nodes: Sequence[BaseNode], todo: list[int],
               fresh: list[Embedding]) -> list[Embedding]:
        vectors: list[Embedding] = [list(n.embedding) if n.embedding is not None else []
                                    for n in nodes]
        for i, v in zip(todo, fresh, strict=True):
            vectors[i] = list(v)
        return vectors

    def ingest(self, ns: Namespace, nodes: list[BaseNode], vectors: list[Embedding],
               manifest: Any) -> tuple[IngestReport, _StoreWrites]:
        """Add one batch to the core and the shelf; returns the store writes it calls for.

        The core's add is atomic: on any error nothing was written anywhere. The stores are
        written after it; if a store fails, the batch is still guarded and BM25 finds it, and
        adding it again (re-adding an id replaces it) repairs the store.
        """
        docs = [GuardDocument(n.node_id, guarded_text(n), n.metadata) for n in nodes]
        with self._lock:
            report = self.index.add(docs, namespace=ns, manifest=manifest, vectors=vectors)
            return report, self._shelve(ns, nodes, vectors, report)

    def _shelve(self, ns: Namespace, nodes: list[BaseNode], vectors: list[Embedding],
                report: IngestReport) -> _StoreWrites:
        key = ns.key
        shelf = self.shelves.setdefault(key, _Shelf())
        writes = _StoreWrites()
        quarantined = {doc_id: (poison, reasons) for doc_id, poison, reasons in report.quarantined}
        for node, vector in zip(nodes, vectors, strict=True):
            doc_id = node.node_id
            sid = store_id(key, doc_id)
            verdict = quarantined.get(doc_id)
            if verdict is None:
                if is_plain(node):
                    shelf.nodes.pop(doc_id, None)  # the core's row rebuilds it exactly
                else:
                    shelf.nodes[doc_id] = node.model_copy(
                        update={"embedding": None, "metadata": dict(node.metadata)})
                if doc_id in shelf.in_quarantine:
                    shelf.in_quarantine.discard(doc_id)
                    writes.drop_quarantine.append(sid)
                if self.vector_store is not None:
                    shelf.in_store[sid] = doc_id
                    writes.main.append(self._copy(ns, sid, node, vector))
            else:
                shelf.nodes.pop(doc_id, None)  # never returned again, so not kept either
                if shelf.in_store.pop(sid, None) is not None:
                    writes.drop_main.append(sid)
                if self.quarantine_store is not None:
                    shelf.in_quarantine.add(doc_id)
                    poison, reasons = verdict
                    writes.quarantine.append(self._copy(
                        ns, sid, node, vector,
                        {_POISON_KEY: poison, _REASONS_KEY: ",".join(reasons)}))
        return writes

    @staticmethod
    def _copy(ns: Namespace, sid: str, node: BaseNode, vector: Embedding,
              extra: dict[str, Any] | None = None) -> TextNode:
        # The namespace keys are written last: a node's own metadata cannot move its copy into
        # another tenant's filter.
        metadata = {**node.metadata, **(extra or {}), STORE_ID_KEY: node.node_id, **ns.as_dict()}
        hidden = [*node.excluded_llm_metadata_keys, *(extra or {}), STORE_ID_KEY]
        return TextNode(id_=sid, text=guarded_text(node), metadata=metadata, embedding=vector,
                        excluded_llm_metadata_keys=hidden,
                        excluded_embed_metadata_keys=[*node.excluded_embed_metadata_keys,
                                                      *(extra or {}), STORE_ID_KEY])

    # Every sync call into a store takes the store's lock (see ``lock_for``): queries shared,
    # writes exclusive. Native async calls go without it: a store that has them is built for
    # concurrent use, and a thread lock must never be held across an await.

    @staticmethod
    def _reading(store: Any, call: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        with lock_for(store).read():
            return call(*args, **kwargs)

    @staticmethod
    def _writing(store: Any, call: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        with lock_for(store).write():
            return call(*args, **kwargs)

    def write(self, writes: _StoreWrites) -> None:
        main, quarantine = self.vector_store, self.quarantine_store
        if main is not None:
            if writes.drop_main:
                self._writing(main, main.delete_nodes, node_ids=writes.drop_main)
            if writes.main:
                self._writing(main, main.add, writes.main)
        if quarantine is not None:
            if writes.drop_quarantine:
                self._writing(quarantine, quarantine.delete_nodes, node_ids=writes.drop_quarantine)
            if writes.quarantine:
                self._writing(quarantine, quarantine.add, writes.quarantine)

    async def awrite(self, writes: _StoreWrites) -> None:
        plan = ((self.vector_store, writes.drop_main, writes.main),
                (self.quarantine_store, writes.drop_quarantine, writes.quarantine))
        for store, drop, add in plan:
            if store is None:
                continue
            if drop:
                if self._native(store, "adelete_nodes"):
                    await store.adelete_nodes(node_ids=drop)
                else:
                    await asyncio.to_thread(self._writing, store, store.delete_nodes, node_ids=drop)
            if add:
                if self._native(store, "async_add"):
                    await store.async_add(add)
                else:
                    await asyncio.to_thread(self._writing, store, store.add, add)

    def forget(self, ns: Namespace, node_ids: Sequence[str]) -> tuple[int, _StoreWrites]:
        """Delete from the core and the shelf; returns the count and the store deletions."""
        key = ns.key
        writes = _StoreWrites()
        with self._lock:
            removed = self.index.delete(node_ids, namespace=ns)
            shelf = self.shelves.get(key)
            if shelf is not None:
                for doc_id in node_ids:
                    sid = store_id(key, doc_id)
                    shelf.nodes.pop(doc_id, None)
                    if shelf.in_store.pop(sid, None) is not None:
                        writes.drop_main.append(sid)
                    if doc_id in shelf.in_quarantine:
                        shelf.in_quarantine.discard(doc_id)
                        writes.drop_quarantine.append(sid)
        return removed, writes

    def purge(self, removed: Iterable[tuple[str, str]]) -> None:
        """Forget revoked ``(namespace key, node id)`` pairs: shelves first, then both stores.

        The shelves go first, so a copy a failing store still holds is fenced off all the same.
        Every derived store id is deleted, known to the shelves or not: a copy written before a
        reload, or by another process, goes too.
        """
        sids: list[str] = []
        with self._lock:
            for key, doc_id in removed:
                sid = store_id(key, doc_id)
                sids.append(sid)
                shelf = self.shelves.get(key)
                if shelf is not None:
                    shelf.nodes.pop(doc_id, None)
                    shelf.in_store.pop(sid, None)
                    shelf.in_quarantine.discard(doc_id)
        if not sids:
            return
        for store in (self.vector_store, self.quarantine_store):
            if store is not None:
                self._writing(store, store.delete_nodes, node_ids=sids)

    def adopt(self) -> None:
        """Rebuild the store-id tables from the core, for stores already holding its copies.

        Every document of the core's main partition is taken to have a copy in ``vector_store``,
        and every quarantined one a copy in ``quarantine_store``. A document that has none (added
        to the core directly) costs nothing: its derived id is simply never returned. The original
        nodes are not in the core: hits of adopted documents come back as plain ``TextNode`` objects.
        """
        with self._lock:
            for key in self.index.namespaces():
                shelf = self.shelves.setdefault(key, _Shelf())
                kept = self.index.ids(namespace=key)
                if self.vector_store is not None:
                    shelf.in_store.update((store_id(key, doc_id), doc_id) for doc_id in kept)
                if self.quarantine_store is not None:
                    every = self.index.ids(namespace=key, include_quarantined=True)
                    shelf.in_quarantine.update(set(every) - set(kept))

    # -- search ---------------------------------------------------------------------------------

    def _store_query(self, ns: Namespace, query_vector: Embedding, n: int) -> VectorStoreQuery:
        filters = None
        if self.namespace_filters:
            filters = MetadataFilters(
                filters=[MetadataFilter(key=k, value=v, operator=FilterOperator.EQ)
                         for k, v in ns.items],
                condition=FilterCondition.AND,
            )
        return VectorStoreQuery(query_embedding=list(query_vector), similarity_top_k=n,
                                filters=filters)

    def _accept(self, ns: Namespace, result: VectorStoreQueryResult,
                blocked: list[str]) -> tuple[list[str], int]:
        """Map a store's ids to this namespace's node ids; the rest are blocked."""
        returned = result.ids if result.ids is not None else [n.node_id for n in result.nodes or []]
        shelf = self.shelves.get(ns.key)
        table = shelf.in_store if shelf is not None else {}
        ids: dict[str, None] = {}  # ordered and deduplicated
        for sid in returned:
            doc_id = table.get(sid)
            if doc_id is None:
                blocked.append(sid)
            else:
                ids[doc_id] = None
        return list(ids), len(returned)

    def _next_fetch(self, fetch: int, n: int, accepted: int, returned: int) -> int | None:
        # Over-fetch only when the store filled the page yet too few ids were this namespace's
        # (a store without filters, or one that ignored them): starving a tenant is a failure too.
        if accepted >= n or returned < fetch or fetch >= self.max_fetch:
            return None
        return min(fetch * 4, self.max_fetch)

    def nominate(self, ns: Namespace, query_vector: Embedding, n: int,
                 blocked: list[str]) -> Nominated:
        store = self.vector_store
        assert store is not None
        fetch: int | None = min(n, self.max_fetch)
        ids: list[str] = []
        while fetch is not None:
            asked = fetch
            result = self._reading(store, store.query, self._store_query(ns, query_vector, fetch))
            ids, returned = self._accept(ns, result, blocked)
            fetch = self._next_fetch(fetch, n, len(ids), returned)
        return Nominated(ids[:n], n, returned < asked)

    async def anominate(self, ns: Namespace, query_vector: Embedding, n: int,
                        blocked: list[str]) -> Nominated:
        store = self.vector_store
        assert store is not None
        native = self._native(store, "aquery")
        fetch: int | None = min(n, self.max_fetch)
        ids: list[str] = []
        while fetch is not None:
            asked = fetch
            query = self._store_query(ns, query_vector, fetch)
            result = (await store.aquery(query) if native
                      else await asyncio.to_thread(self._reading, store, store.query, query))
            ids, returned = self._accept(ns, result, blocked)
            fetch = self._next_fetch(fetch, n, len(ids), returned)
        return Nominated(ids[:n], n, returned < asked)

    def search(self, ns: Namespace, query: str, k: int, query_vector: Embedding,
               nominated: Nominated | None = None,
               blocked: list[str] | None = None) -> tuple[SearchResult, list[str]]:
        """One guarded search; returns the result and the store ids the fence blocked.

        Blocked ids count as namespace violations only when the store was asked to filter: then
        a foreign id means the store ignored the filter, or something else writes to it.

        Args:
            nominated: dense candidates already fetched (by :meth:`anominate`).
            blocked: the ids the fence blocked while fetching them.
        """
        blocked = [] if blocked is None else blocked
        dense: Callable[[np.ndarray, int], list[str]] | None = None
        if self.vector_store is not None:
            def dense(_normalised: np.ndarray, n: int) -> list[str]:
                # The store gets the raw query embedding, as its own retrievers would send it.
                if nominated is not None and (n <= nominated.asked or nominated.complete):
                    return nominated.ids[:n]
                if not self.in_store(ns):  # nothing of this namespace there: no round trip
                    return []
                return self.nominate(ns, query_vector, n, blocked).ids

        result = self.index.search(query, namespace=ns, k=k, query_vector=query_vector, dense=dense)
        if blocked and self.namespace_filters:
            logger.warning("namespace violation blocked: the base store returned %d id(s) "
                           "outside %r for a filtered query", len(blocked), ns.key)
            result.violations += len(blocked)
            return result, blocked
        return result, []

    def in_store(self, ns: Namespace) -> bool:
        """Whether the base store holds any node of ``ns`` (else it can nominate nothing)."""
        shelf = self.shelves.get(ns.key)
        return self.vector_store is not None and shelf is not None and bool(shelf.in_store)
