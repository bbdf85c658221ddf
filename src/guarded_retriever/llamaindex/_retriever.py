"""``GuardedRetriever``: a LlamaIndex retriever over a guarded index, bound to one namespace."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.callbacks import CallbackManager
from llama_index.core.constants import DEFAULT_SIMILARITY_TOP_K
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle, QueryType
from llama_index.core.vector_stores.types import BasePydanticVectorStore

from .. import (
    ConfigError,
    DocumentError,
    GuardedIndex,
    IngestReport,
    ManifestSigner,
    Namespace,
    QueryError,
    SearchResult,
)
from .._incident import RevocationReport
from .._index import _check_query
from ._events import emit_guard_events
from ._nodes import GUARD_METADATA_KEY, guarded_copy, guarded_text, node_from_hit
from ._store import GuardedStores, Nominated


def _node_ids(node_ids: Any) -> list[str]:
    """Node ids for a delete: one string is refused, not read as its characters."""
    if isinstance(node_ids, str | bytes):
        raise DocumentError(f"node_ids must be a list of ids, not one string: pass [{node_ids!r}]")
    if isinstance(node_ids, Mapping) or not isinstance(node_ids, Iterable):
        raise DocumentError(f"node_ids must be a list of ids, got {type(node_ids).__name__}")
    ids = list(node_ids)
    if not all(isinstance(i, str) for i in ids):
        raise DocumentError("node_ids must be str")
    return ids

if TYPE_CHECKING:  # pragma: no cover
    from ._postprocessor import GuardedNodePostprocessor

__all__ = ["GuardedRetriever"]

NamespaceLike = Namespace | Mapping[str, Any] | str


def _check_top_k(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"similarity_top_k must be a positive int, got {value!r}")
    return value


def _check_key(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"metadata_key must be a non-empty str or None, got {value!r}")
    return value


class GuardedRetriever(BaseRetriever):
    """Guarded hybrid retrieval (BM25 + dense, provenance, poison quarantine) for one namespace.

    The namespace is bound here and is the only one this retriever ever searches or writes: it is
    never read from a query, and a missing or malformed one raises :class:`NamespaceError` now,
    not at query time. :meth:`for_namespace` gives views on other namespaces that share the
    index and the stores.

    Nodes go in through :meth:`add_nodes`, which runs the ingest guard (manifest, poison score,
    quarantine), indexes the kept nodes in the core and copies them to ``vector_store``. Retrieval
    fuses the core's BM25 with the dense candidates ``vector_store`` nominates (or the core's own
    FAISS), re-checks the leading candidates for poison against the query, and returns
    ``NodeWithScore`` objects whose ``score`` is the fused score. Quarantined documents are never
    returned; they are reported through :class:`QuarantineEvent` instead.

    Args:
        namespace: the namespace this retriever serves (a mapping with exactly the index's
            namespace keys, a :class:`~guarded_retriever.Namespace` or its canonical key).
        embed_model: embeds nodes and queries. Required: ``Settings`` is never read or written.
        index: the guarded core. By default a new ``GuardedIndex(embed_model)``, whose trust
            policy requires a signed manifest with every batch; pass your own for another policy.
        vector_store: any LlamaIndex vector store (``SimpleVectorStore``, ``QdrantVectorStore``,
            ...) as the dense side; ``None`` uses the core's FAISS shards.
        quarantine_store: a second vector store that receives quarantined nodes, for review.
        similarity_top_k: how many nodes to return.
        namespace_filters: send positive ``EQ`` filters on every namespace key with each store
            query. Turn it off for stores that reject filters (FAISS): nominations are then
            over-fetched, and either way only ids this namespace wrote are accepted.
        native_async: await the stores' native async methods (``None``: where they exist).
        max_fetch: the most candidates a search asks the store for while over-fetching.
        metadata_key: the metadata key of the guard's findings on each node; ``None`` returns
            the nodes' own metadata only. Use ``None`` inside ``QueryFusionRetriever``, which
            dedups by ``node.hash`` (text *and* metadata): per-query scores in the metadata would
            keep the same node from two lists apart. The findings stay in :meth:`search`.
        callback_manager: LlamaIndex's legacy callback manager.
        verbose: as for every LlamaIndex retriever.

    Only nodes added through a retriever (any namespace view) have copies in ``vector_store``;
    documents added to the core directly are found by BM25 alone when a store is given.

    :meth:`persist` saves the guarded index (signed) and :meth:`from_persist_dir` verifies and
    reloads it; the vector stores are persisted by their own means. :meth:`revoke` (or
    :meth:`GuardedIndex.revoke` on the core) purges a content hash or manifest from the core and
    deletes its copies from both stores.

    A ``QdrantVectorStore`` built with a sync ``client`` only has no working ``aquery``: give it an
    ``aclient`` as well, or pass ``native_async=False`` so the async path runs the sync calls in a
    worker thread (with ``QdrantClient(":memory:")`` the two clients do not share data, so use
    ``native_async=False`` there, or an ``AsyncQdrantClient`` alone with the async methods).

    Example::

        acme = GuardedRetriever(namespace={"tenant_id": "acme", "product_id": "kb", "env": "prod"},
                                embed_model=embed_model, vector_store=qdrant_store,
                                similarity_top_k=4)
        acme.add_nodes(nodes, manifest=signed_manifest)
        globex = acme.for_namespace({"tenant_id": "globex", "product_id": "kb", "env": "prod"})
        engine = RetrieverQueryEngine.from_args(acme, llm=llm,
                                                node_postprocessors=[acme.as_postprocessor()])
    """

    def __init__(
        self,
        *,
        namespace: NamespaceLike,
        embed_model: BaseEmbedding,
        index: GuardedIndex | None = None,
        vector_store: BasePydanticVectorStore | None = None,
        quarantine_store: BasePydanticVectorStore | None = None,
        similarity_top_k: int = DEFAULT_SIMILARITY_TOP_K,
        namespace_filters: bool = True,
        native_async: bool | None = None,
        max_fetch: int = 1000,
        metadata_key: str | None = GUARD_METADATA_KEY,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if not isinstance(embed_model, BaseEmbedding):
            raise ConfigError("embed_model must be a LlamaIndex BaseEmbedding (it is never taken "
                              f"from Settings), got {type(embed_model).__name__}")
        core = index if index is not None else GuardedIndex(embed_model)
        self._stores = GuardedStores(
            core, embed_model, vector_store=vector_store, quarantine_store=quarantine_store,
            namespace_filters=namespace_filters, native_async=native_async, max_fetch=max_fetch)
        self._namespace = self._stores.parse(namespace)
        self.similarity_top_k = _check_top_k(similarity_top_k)
        self.metadata_key = _check_key(metadata_key)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    # -- what it is bound to --------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        """The canonical key of the namespace this retriever serves."""
        return self._namespace.key

    @property
    def index(self) -> GuardedIndex:
        return self._stores.index

    @property
    def embed_model(self) -> BaseEmbedding:
        return self._stores.embed_model

    @property
    def vector_store(self) -> BasePydanticVectorStore | None:
        return self._stores.vector_store

    @property
    def quarantine_store(self) -> BasePydanticVectorStore | None:
        return self._stores.quarantine_store

    def for_namespace(self, namespace: NamespaceLike, *,
                      similarity_top_k: int | None = None) -> GuardedRetriever:
        """A retriever for another namespace over the same index and stores.

        Raises:
            NamespaceError: ``namespace`` is missing or malformed.
        """
        view = copy.copy(self)
        view._namespace = self._stores.parse(namespace)
        if similarity_top_k is not None:
            view.similarity_top_k = _check_top_k(similarity_top_k)
        return view

    def as_postprocessor(self) -> GuardedNodePostprocessor:
        """A :class:`GuardedNodePostprocessor` on this retriever's index and namespace."""
        from ._postprocessor import GuardedNodePostprocessor

        return GuardedNodePostprocessor(index=self.index, namespace=self._namespace,
                                        metadata_key=self.metadata_key,
                                        callback_manager=self.callback_manager)

    # -- writes ---------------------------------------------------------------------------------

    def add_nodes(self, nodes: Iterable[BaseNode], *, manifest: Any = None) -> IngestReport:
        """Ingest nodes into this namespace through the guard.

        Nodes without an embedding are embedded from their ``MetadataMode.EMBED`` content, as
        ``VectorStoreIndex`` does; the guard indexes and judges :func:`guarded_text` (the content
        without metadata), which is also what a signed manifest must list. A node id added again
        replaces its previous version, in the core and in the stores.

        Args:
            nodes: LlamaIndex nodes (``TextNode``, ``Document``, ...).
            manifest: the batch's manifest, as for :meth:`GuardedIndex.add`.

        Returns:
            The core's report: which ids were kept and which were quarantined, and why.

        Raises:
            GuardedRetrieverError: any subclass; nothing was written.
        """
        batch = self._stores.check_nodes(list(nodes))
        vectors = self._stores.embed_nodes(batch)
        report, writes = self._stores.ingest(self._namespace, batch, vectors, manifest)
        self._stores.write(writes)
        return report

    async def aadd_nodes(self, nodes: Iterable[BaseNode], *, manifest: Any = None) -> IngestReport:
        """:meth:`add_nodes` without blocking the event loop."""
        batch = self._stores.check_nodes(list(nodes))
        vectors = await self._stores.aembed_nodes(batch)
        report, writes = await asyncio.to_thread(
            self._stores.ingest, self._namespace, batch, vectors, manifest)
        await self._stores.awrite(writes)
        return report

    def delete_nodes(self, node_ids: Iterable[str]) -> int:
        """Delete nodes of this namespace from the core and both stores; returns how many."""
        removed, writes = self._stores.forget(self._namespace, _node_ids(node_ids))
        self._stores.write(writes)
        return removed

    async def adelete_nodes(self, node_ids: Iterable[str]) -> int:
        """:meth:`delete_nodes` without blocking the event loop."""
        removed, writes = await asyncio.to_thread(
            self._stores.forget, self._namespace, _node_ids(node_ids))
        await self._stores.awrite(writes)
        return removed

    def revoke(self, *, content_hash: str | None = None, manifest_id: str | None = None,
               reason: str = "revoked") -> RevocationReport:
        """Revoke one content hash or one manifest in this retriever's namespace.

        Calls :meth:`GuardedIndex.revoke` scoped to the namespace (it purges the core's copies
        there and refuses the content there from now on, and reports nothing of other
        namespaces; ``retriever.index.revoke(...)`` is the operator's index-wide call), then
        deletes the removed documents' copies from ``vector_store`` and
        ``quarantine_store`` and forgets them here. A revocation called on the core directly does
        the same for every retriever over it, so this is a convenience, not a requirement.

        Returns:
            The core's report; ``removed`` lists the ``(namespace key, node id)`` pairs purged.

        Raises:
            ConfigError: not exactly one of ``content_hash`` and ``manifest_id`` was given.
        """
        # index.revoke is wrapped per instance (see _store): it purges every registered store.
        return self.index.revoke(content_hash=content_hash, manifest_id=manifest_id, reason=reason,
                                 namespace=self._namespace.key)

    # -- persistence ----------------------------------------------------------------------------

    def persist(self, persist_dir: str | Path, *, signer: ManifestSigner | None) -> Path:
        """Save the guarded index (every namespace, ledger included) to a new directory.

        This is :meth:`GuardedIndex.save`: the directory is checksummed and signed by ``signer``
        (``None`` writes an unsigned one, which :meth:`from_persist_dir` refuses by default).
        Nothing else is written: the adapter's id tables are rebuilt from the index on load.

        Only the guarded index is persisted, never ``vector_store`` or ``quarantine_store``:
        persist those with their own tools (``SimpleVectorStore.persist``; a Qdrant server keeps
        its own). Nodes come back from a reloaded index as ``TextNode`` objects with the same id, text
        and metadata, without the relationships of the nodes first given.

        Returns:
            The directory written.
        """
        return self.index.save(persist_dir, signer=signer)

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str | Path,
        *,
        namespace: NamespaceLike,
        embed_model: BaseEmbedding,
        trusted_signers: Iterable[str] = (),
        allow_unsigned: bool = False,
        vector_store: BasePydanticVectorStore | None = None,
        min_generation: int | None = None,
        generation: int | None = None,
        **kwargs: Any,
    ) -> GuardedRetriever:
        """A retriever over an index saved by :meth:`persist`, verified before it is read.

        Args:
            persist_dir: the directory :meth:`persist` wrote.
            namespace: the namespace the retriever serves.
            embed_model: embeds queries and new nodes; it must be the model the index was built
                with (the saved vectors are used as they are).
            trusted_signers: public keys whose signature is accepted.
            allow_unsigned: load an unsigned directory too.
            min_generation, generation: refuse an older (or another) saved generation than this
                (``RollbackError``); ``retriever.index.generation`` is the one the last save wrote.
            vector_store: ``None`` searches the core's own FAISS shards. A store given here must
                already hold the copies a retriever wrote before :meth:`persist` (it is not
                written to); they are recognised by their derived ids.
            kwargs: the other arguments of :class:`GuardedRetriever` (``quarantine_store``,
                ``similarity_top_k``, ...), except ``index``.

        Raises:
            IntegrityError: the directory is modified, truncated, unsigned (without
                ``allow_unsigned``), or not a saved index.
            UntrustedSignerError: it is signed by a key not in ``trusted_signers``.
            SignatureError: its signature does not verify.
        """
        if "index" in kwargs:
            raise ConfigError("from_persist_dir loads its own index: do not pass index=")
        if not isinstance(embed_model, BaseEmbedding):
            raise ConfigError("embed_model must be a LlamaIndex BaseEmbedding (it is never taken "
                              f"from Settings), got {type(embed_model).__name__}")
        core = GuardedIndex.load(persist_dir, trusted_signers=trusted_signers,
                                 allow_unsigned=allow_unsigned, embedder=embed_model,
                                 min_generation=min_generation, generation=generation)
        retriever = cls(namespace=namespace, embed_model=embed_model, index=core,
                        vector_store=vector_store, **kwargs)
        retriever._stores.adopt()
        return retriever

    # -- search ---------------------------------------------------------------------------------

    def _bundle(self, query: QueryType) -> QueryBundle:
        """The query as a bundle, checked (type, length, surrogates) before the embedder sees it."""
        bundle = QueryBundle(query) if isinstance(query, str) else query
        if not isinstance(bundle, QueryBundle):
            raise QueryError(f"query must be a str or a QueryBundle, got {type(query).__name__}")
        _check_query(bundle.query_str, self.index.config.max_query_chars)
        return bundle

    def search(self, query: QueryType, *, k: int | None = None) -> SearchResult:
        """The full guarded result (kept and quarantined hits, ΔS, alerts and the contract).

        :meth:`retrieve` returns its kept hits as nodes; use this for ``result.contract()``.
        """
        bundle = self._bundle(query)
        top_k = self.similarity_top_k if k is None else _check_top_k(k)
        query_vector = self._query_vector(bundle)
        result, blocked = self._stores.search(
            self._namespace, bundle.query_str, top_k, query_vector)
        emit_guard_events(result, "retriever", blocked)
        return result

    async def asearch(self, query: QueryType, *, k: int | None = None) -> SearchResult:
        """:meth:`search` with native async embedding and store calls, CPU work off the loop."""
        bundle = self._bundle(query)
        top_k = self.similarity_top_k if k is None else _check_top_k(k)
        query_vector = await self._aquery_vector(bundle)
        nominated: Nominated | None = None
        blocked: list[str] = []
        if self._stores.in_store(self._namespace):
            # The same candidate count the core asks its dense side for; should it ask for more,
            # the sync store query runs in the worker thread, still off the loop.
            n = max(self.index.config.candidates, top_k)
            nominated = await self._stores.anominate(self._namespace, query_vector, n, blocked)
        result, blocked = await asyncio.to_thread(
            self._stores.search, self._namespace, bundle.query_str, top_k, query_vector,
            nominated, blocked)
        emit_guard_events(result, "retriever", blocked)
        return result

    def _query_vector(self, bundle: QueryBundle) -> Embedding:
        # A caller's precomputed embedding is honoured, as VectorIndexRetriever does; the bundle
        # is not mutated (a shared bundle would leak this model's vector to sibling retrievers).
        # One string (the usual bundle) is embedded directly: the mean of one vector is itself, and
        # the aggregating call costs a second instrumentation span per query.
        if bundle.embedding is not None:
            return bundle.embedding
        strs = bundle.embedding_strs
        if len(strs) <= 1:  # none: an empty query, which LlamaIndex would have nothing to average
            return self.embed_model.get_query_embedding(strs[0] if strs else bundle.query_str)
        return self.embed_model.get_agg_embedding_from_queries(strs)

    async def _aquery_vector(self, bundle: QueryBundle) -> Embedding:
        if bundle.embedding is not None:
            return bundle.embedding
        strs = bundle.embedding_strs
        if len(strs) <= 1:
            return await self.embed_model.aget_query_embedding(strs[0] if strs else bundle.query_str)
        return await self.embed_model.aget_agg_embedding_from_queries(strs)

    def _nodes(self, result: SearchResult) -> list[NodeWithScore]:
        shelf = self._stores.shelves.get(result.namespace)
        given = shelf.nodes if shelf is not None else {}
        key = self.metadata_key
        out = []
        for hit in result.kept:
            node = given.get(hit.id)
            # Plain nodes are not shelved (the core's row rebuilds them), nor are documents
            # ingested through the core directly. A shelved node whose text the core no longer
            # has was replaced there since: the core's text is what the guard judged, so it is
            # what goes out.
            if node is not None and guarded_text(node) == hit.text:
                rebuilt = guarded_copy(node, hit, key)
            else:
                rebuilt = node_from_hit(hit, key)
            out.append(NodeWithScore(node=rebuilt, score=hit.fused))
        return out

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._nodes(self.search(query_bundle))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # The base class would run _retrieve on the event loop; this awaits the embed model and
        # the store natively and runs BM25, FAISS and the guard in a worker thread.
        return self._nodes(await self.asearch(query_bundle))
