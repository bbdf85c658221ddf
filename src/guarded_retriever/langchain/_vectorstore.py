"""``GuardedVectorStore``: a LangChain vector store whose writes and reads go through the guard."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Self

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from langchain_core.vectorstores import VectorStore
from typing_extensions import override

from .._config import GuardConfig
from .._exceptions import ConfigError, DocumentError
from .._incident import RevocationReport
from .._index import GuardedIndex, IngestReport, SearchResult
from .._ingest import GuardDocument
from .._ledger import Ledger
from .._manifest import ManifestSigner
from .._policy import TrustPolicy
from ._common import GuardedSearch, NamespaceLike, bind_namespace, copy_metadata, hit_document, resolve_namespace
from ._retriever import GuardedRetriever
from ._stores import StoreProfile, StoreSide, store_id


def _id_list(ids: Any) -> list[str]:
    """LangChain ids as the core takes them (``str(i)`` of each, as LangChain stores do); one
    string is refused, not read as its characters (``delete("doc-1")`` would delete ``"d"``...)."""
    if isinstance(ids, str | bytes):
        raise DocumentError(f"ids must be a list of ids, not one string: pass [{ids!r}]")
    if not isinstance(ids, Iterable):
        raise DocumentError(f"ids must be a list of ids, got {type(ids).__name__}")
    return [str(i) for i in ids]

__all__ = ["GuardedVectorStore"]

_ADD_KWARGS = frozenset({"ids", "manifest", "namespace"})

# The stores holding copies of an index's documents, kept on the index itself (see _watch_revocations).
_COPY_STORES = "_langchain_copy_stores"


def _delete_copies(store: VectorStore, removed: Sequence[tuple[str, str]]) -> None:
    """Delete the copies of ``removed`` ``(namespace, doc_id)`` documents from ``store``."""
    sids = [store_id(key, doc_id) for key, doc_id in removed]
    try:
        store.delete(sids)
    except ValueError:
        # Some stores (LangChain's FAISS) refuse a delete naming an id they do not hold; a revoked
        # document is in the base store or in the quarantine store, never both.
        held = {str(d.id if d.id is not None else d.metadata.get("_id")) for d in store.get_by_ids(sids)}
        present = [sid for sid in sids if sid in held]
        if present:
            store.delete(present)


def _watch_revocations(index: GuardedIndex, stores: Iterable[VectorStore]) -> None:
    """Make ``index.revoke`` also delete the revoked documents' copies from ``stores``.

    The core index cannot see the LangChain stores a :class:`GuardedVectorStore` writes to, so the
    first store over an index registers a revocation listener (``index.add_revoke_listener``) that
    purges every store registered on it since. A revocation reaches every namespace, so the purge does too:
    store ids are derived from ``(namespace, id)``, so only the revoked documents' copies go.
    """
    held: list[VectorStore] | None = vars(index).get(_COPY_STORES)
    if held is None:
        copies: list[VectorStore] = []

        def purge(report: RevocationReport) -> None:
            if report.removed:
                failures: list[BaseException] = []
                for store in list(copies):
                    try:
                        _delete_copies(store, report.removed)
                    except Exception as exc:  # purge every other store before reporting it
                        failures.append(exc)
                if failures:
                    failures[0].add_note(
                        f"{report.kind} {report.value!r} is revoked in the index, but deleting the copies of "
                        f"{report.removed} from a base or quarantine store failed ({len(failures)} store(s)); "
                        "delete them there by store_id(namespace, id)"
                    )
                    raise failures[0]

        vars(index)[_COPY_STORES] = held = copies
        index.add_revoke_listener(purge)
    for store in stores:
        if not any(store is h for h in held):
            held.append(store)


class GuardedVectorStore(VectorStore):
    """A vector store that ingests through the guard and searches through it, inside one namespace.

    ``add_documents`` / ``add_texts`` run each batch through the ingest pipeline (manifest check,
    canonicalisation, fingerprints, poison score). Kept documents go to the index and to ``base``;
    quarantined ones to the index's quarantine and, when given, to ``quarantine_store``. A batch is
    all or nothing: the pipeline refuses a bad batch before anything is written, and a base-store
    failure takes the batch back out of the index before it re-raises.

    ``similarity_search`` is the guarded hybrid search, with ``base`` as its dense side (or the
    index's own FAISS when ``base`` is ``None``). It returns exactly the user's metadata, as
    LangChain's standard tests require; :meth:`as_guarded_retriever` returns the same search with
    scores, reasons and callback events.

    The store is bound to one namespace; :meth:`for_namespace` gives a view of the same index and
    stores for another. ``delete(None)`` empties the bound namespace only.

    :meth:`save_local` / :meth:`load_local` save and load the guarded index (signed, never pickled;
    the base stores are the caller's). :meth:`revoke`, like ``index.revoke``, also deletes the
    revoked documents' copies from ``base`` and ``quarantine_store``.

    Args:
        base: the base vector store for kept documents; ``None`` to use the index's FAISS alone.
        namespace: the bound namespace (required: nothing is ever defaulted).
        embedding: the guard's embedder; defaults to ``base.embeddings``. When it is the very object
            ``base`` embeds with, queries reach ``base`` as vectors (one embedding per query).
        index: an existing :class:`GuardedIndex` to share; otherwise one is built from
            ``embedding``, ``policy``, ``config`` and ``ledger``.
        quarantine_store: where quarantined documents are also written, for review.
        store_profile: how to read ``base``'s scores and filter it (default: ``profile_for(base)``).
        over_fetch: for a ``base`` that cannot pre-filter by namespace, the first over-fetch factor.
        max_fetch: the largest fetch the progressive over-fetch may reach.
        policy: the ingest trust policy for a new index (signed manifests required by default).
        config: the guard's configuration for a new index.
        ledger: the decision ledger for a new index.

    Example:
        ```python
        from langchain_core.vectorstores import InMemoryVectorStore
        from guarded_retriever.langchain import GuardedVectorStore

        store = GuardedVectorStore(InMemoryVectorStore(embeddings), namespace=ns, policy=policy)
        store.add_documents(docs, manifest=signer.sign_texts([d.page_content for d in docs], ...))
        store.similarity_search("How do I reset my password?", k=4)
        ```
    """

    def __init__(
        self,
        base: VectorStore | None = None,
        *,
        namespace: NamespaceLike,
        embedding: Embeddings | Any | None = None,
        index: GuardedIndex | None = None,
        quarantine_store: VectorStore | None = None,
        store_profile: StoreProfile | None = None,
        over_fetch: int = 4,
        max_fetch: int = 1000,
        policy: TrustPolicy | None = None,
        config: GuardConfig | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        if index is None:
            embedder = (
                embedding
                if embedding is not None
                else (base.embeddings if base is not None else None)
            )
            if embedder is None:
                raise ConfigError(
                    "GuardedVectorStore needs an embedding (or a base store that has one)"
                )
            index = GuardedIndex(embedder, policy=policy, config=config, ledger=ledger)
        elif (
            embedding is not None or policy is not None or config is not None or ledger is not None
        ):
            raise ConfigError(
                "pass either an index or embedding/policy/config/ledger to build one, not both"
            )
        self.index = index
        self.namespace = bind_namespace(index, namespace)
        self.base = base
        self.quarantine_store = quarantine_store
        self.store_profile = store_profile
        self.over_fetch = over_fetch
        self.max_fetch = max_fetch
        self._base_side = self._side(base, store_profile) if base is not None else None
        self._quarantine_side = (
            self._side(quarantine_store, None) if quarantine_store is not None else None
        )
        self._search = GuardedSearch(index, self._base_side)
        _watch_revocations(index, [s for s in (base, quarantine_store) if s is not None])

    def _side(self, store: VectorStore, profile: StoreProfile | None) -> StoreSide:
        return StoreSide(
            store,
            profile=profile,
            query_by_vector=store.embeddings is self.index.embedder,
            over_fetch=self.over_fetch,
            max_fetch=self.max_fetch,
        )

    @property
    @override
    def embeddings(self) -> Embeddings | None:
        embedder = self.index.embedder
        return embedder if isinstance(embedder, Embeddings) else None

    def for_namespace(self, namespace: NamespaceLike) -> Self:
        """A view bound to ``namespace``, sharing this store's index, base and quarantine stores."""
        view = copy.copy(self)
        view.namespace = bind_namespace(self.index, namespace)
        return view

    def as_guarded_retriever(self, **kwargs: Any) -> GuardedRetriever:
        """A :class:`GuardedRetriever` over this store's index, namespace and base store.

        Keyword arguments (``k``, ``metadata_key``, ``tags``, ...) go to the retriever.
        """
        params: dict[str, Any] = {
            "index": self.index,
            "namespace": self.namespace,
            "vectorstore": self.base,
            "store_profile": self.store_profile,
            "over_fetch": self.over_fetch,
            "max_fetch": self.max_fetch,
            **kwargs,
        }
        return GuardedRetriever(**params)

    # -- writes ---------------------------------------------------------------------------------

    def _prepare(
        self, documents: list[Document], kwargs: dict[str, Any]
    ) -> tuple[list[GuardDocument], Any]:
        unknown = set(kwargs) - _ADD_KWARGS
        if unknown:
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
        resolve_namespace(self.index, self.namespace, kwargs.get("namespace"))
        ids = kwargs.get("ids")
        if ids is not None and len(ids) != len(documents):
            raise DocumentError(f"got {len(ids)} ids for {len(documents)} documents")
        if ids is None:
            ids = [d.id for d in documents]
        # Generated ids are fresh uuid4s; the input Documents are never mutated.
        docs = [
            GuardDocument(
                str(i) if i is not None else str(uuid.uuid4()),
                d.page_content,
                copy_metadata(d.metadata),
            )
            for i, d in zip(ids, documents, strict=True)
        ]
        return docs, kwargs.get("manifest")

    def _placement(self, ids: list[str]) -> tuple[set[str], set[str]]:
        """Which of ``ids`` the index holds now: ``(kept, quarantined)``."""
        kept = {r.id for r in self.index.get(ids, namespace=self.namespace)}
        held = {
            r.id for r in self.index.get(ids, namespace=self.namespace, include_quarantined=True)
        }
        return kept, held - kept

    def _routes(
        self, docs: list[GuardDocument], report: IngestReport, before: tuple[set[str], set[str]]
    ) -> list[tuple[StoreSide, str, list[Any]]]:
        """The store writes and deletes one ingested batch calls for, as ``(side, op, items)``."""
        by_id = {d.id: d for d in docs}
        quarantined = [q[0] for q in report.quarantined]
        was_kept, was_quarantined = before
        ops: list[tuple[StoreSide, str, list[Any]]] = []
        if self._base_side is not None:
            ops.append((self._base_side, "write", [by_id[i] for i in report.kept]))
            # A re-added id that is now quarantined must leave the base store.
            ops.append((self._base_side, "remove", [i for i in quarantined if i in was_kept]))
        if self._quarantine_side is not None:
            ops.append((self._quarantine_side, "write", [by_id[i] for i in quarantined]))
            ops.append(
                (self._quarantine_side, "remove", [i for i in report.kept if i in was_quarantined])
            )
        return ops

    @override
    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Ingest ``documents`` through the guard.

        Keyword Args:
            ids: ids for the documents (they take precedence over ``Document.id``; missing ones
                are generated).
            manifest: the batch's ingest manifest (a ``SignedManifest``, its JSON, or an unsigned
                ``IngestManifest`` when the policy allows it).
            namespace: optional; must repeat the bound namespace.

        Returns:
            The ids of every document of the batch, kept or quarantined.

        Raises:
            GuardedRetrieverError: the batch was refused; nothing was written.
        """
        docs, manifest = self._prepare(documents, kwargs)
        if not docs:
            return []
        before = self._placement([d.id for d in docs])

        def write_copies(report: IngestReport) -> None:
            # Inside the index's ledger transaction: if a store write fails, the index rolls the
            # batch back and restores any previous versions of re-added ids.
            for side, op, items in self._routes(docs, report, before):
                if op == "write":
                    side.write(self.namespace, items)
                else:
                    side.remove(self.namespace, items)

        self.index.add(docs, namespace=self.namespace, manifest=manifest, on_commit=write_copies)
        return [d.id for d in docs]

    @override
    async def aadd_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """The async twin of :meth:`add_documents`, run in the executor: the store writes belong to
        the index's transaction, so they cannot be awaited separately."""
        return await run_in_executor(None, partial(self.add_documents, documents, **kwargs))

    def _ids_to_delete(self, ids: Sequence[str] | None) -> list[str]:
        if ids is not None:
            return _id_list(ids)
        # delete(None) means "everything" in LangChain; for a guarded store, its namespace's all.
        return self.index.ids(namespace=self.namespace, include_quarantined=True)

    @override
    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete from the bound namespace, in the index and both stores; missing ids are fine."""
        targets = self._ids_to_delete(ids)
        self.index.delete(targets, namespace=self.namespace)
        for side in (self._base_side, self._quarantine_side):
            if side is not None:
                side.remove(self.namespace, targets)
        return True

    @override
    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        targets = self._ids_to_delete(ids)
        await run_in_executor(None, partial(self.index.delete, targets, namespace=self.namespace))
        for side in (self._base_side, self._quarantine_side):
            if side is not None:
                await side.aremove(self.namespace, targets)
        return True

    @override
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The kept documents of the bound namespace with these ids (quarantined ones never)."""
        return [
            Document(page_content=r.text, metadata=copy_metadata(r.metadata), id=r.id)
            for r in self.index.get(_id_list(ids), namespace=self.namespace)
        ]

    @override
    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return await run_in_executor(None, self.get_by_ids, ids)

    # -- reads ----------------------------------------------------------------------------------

    def guarded_search(self, query: str, k: int = 4) -> SearchResult:
        """The full guarded search result: kept and quarantined hits, ΔS, λ_state, the contract."""
        return self._search.run(query, self.namespace, k)[0]

    async def aguarded_search(self, query: str, k: int = 4) -> SearchResult:
        return (await self._search.arun(query, self.namespace, k))[0]

    @staticmethod
    def _no_kwargs(kwargs: dict[str, Any]) -> None:
        # A filter= meant to scope a tenant must not be ignored silently: the namespace scopes.
        if kwargs:
            raise TypeError(
                f"GuardedVectorStore search takes no {sorted(kwargs)}; "
                "scope searches with the bound namespace (for_namespace)"
            )

    @override
    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    @override
    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Guarded search; the score is the guard's fused score (higher is better)."""
        self._no_kwargs(kwargs)
        return [
            (hit_document(h, score=False, guard_key=None), h.fused)
            for h in self.guarded_search(query, k).kept
        ]

    @override
    async def asimilarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, **kwargs)]

    @override
    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        self._no_kwargs(kwargs)
        result = await self.aguarded_search(query, k)
        return [(hit_document(h, score=False, guard_key=None), h.fused) for h in result.kept]

    @override
    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """The fused score onto [0, 1]: over the best score the configured fusion can reach."""
        cfg = self.index.config
        if cfg.fusion == "rrf":
            top = sum(cfg.rrf_weights) / (1 + cfg.rrf_c)
        else:
            w = cfg.weights
            top = w.alpha + w.beta + w.gamma
        return lambda score: min(1.0, max(0.0, score / top))

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    @override
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[Any, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> Self:
        """Build a store and ingest ``texts``.

        Keyword Args:
            namespace: required.
            manifest: the batch's manifest.
            base, quarantine_store, policy, config, ...: as for the constructor.
        """
        manifest = kwargs.pop("manifest", None)
        store = cls(embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids, manifest=manifest)
        return store

    # -- persistence and incident response ------------------------------------------------------

    def save_local(self, folder_path: str | Path, *, signer: ManifestSigner | None) -> Path:
        """Save the guarded index (every namespace, quarantine and ledger included) to a new folder.

        The save is :meth:`GuardedIndex.save`: pickle-free, with a checksum manifest signed by
        ``signer`` (``None`` writes an unsigned folder, which :meth:`load_local` refuses unless told
        ``allow_unsigned=True``). Only the guarded index is persisted: ``base`` and
        ``quarantine_store`` are the caller's stores and are saved (or not) by their own means.

        Returns:
            The folder written (it must not exist yet).
        """
        return self.index.save(folder_path, signer=signer)

    @classmethod
    def load_local(
        cls,
        folder_path: str | Path,
        embeddings: Embeddings | Any,
        *,
        namespace: NamespaceLike,
        trusted_signers: Iterable[str] = (),
        allow_unsigned: bool = False,
        base: VectorStore | None = None,
        min_generation: int | None = None,
        generation: int | None = None,
        **kwargs: Any,
    ) -> Self:
        """Verify and load a folder written by :meth:`save_local`, as a store bound to ``namespace``.

        The folder's signature must come from one of ``trusted_signers`` and every file must match its
        checksum; nothing is unpickled, so there is no ``allow_dangerous_deserialization`` flag.

        Args:
            embeddings: the guard's embedder for queries (the one the index was built with).
            namespace: the bound namespace.
            trusted_signers: hex ed25519 public keys whose signature is accepted.
            allow_unsigned: load a folder saved with ``signer=None`` (only from trusted storage).
            min_generation, generation: refuse an older (or another) saved generation than this
                (``RollbackError``); ``store.index.generation`` is the one the last save wrote.
            base: ``None`` to search over the index's own FAISS; otherwise the caller's base store,
                used as it is (already populated, never written to by the load): only the guarded
                index comes from the folder. Documents the index does not hold are never served,
                but a revocation made to the saved folder (by the CLI, say) does not reach ``base``.
            **kwargs: ``quarantine_store``, ``store_profile``, ``over_fetch``, ``max_fetch``.

        Raises:
            IntegrityError: unsigned (without ``allow_unsigned``), or a file missing, unlisted,
                modified or truncated.
            UntrustedSignerError, SignatureError: signed by an untrusted key, or a bad signature.
        """
        index = GuardedIndex.load(
            folder_path, trusted_signers=trusted_signers, allow_unsigned=allow_unsigned, embedder=embeddings,
            min_generation=min_generation, generation=generation,
        )
        return cls(base, namespace=namespace, index=index, **kwargs)

    def revoke(
        self, *, content_hash: str | None = None, manifest_id: str | None = None, reason: str = "revoked"
    ) -> RevocationReport:
        """Revoke a content hash or a manifest in the bound namespace: from the index and from the
        base and quarantine stores.

        This is :meth:`GuardedIndex.revoke` scoped to the bound namespace (it removes and refuses
        the content there only, and reports nothing of other tenants), followed by deleting the
        removed documents' copies from ``base`` and ``quarantine_store``. The index-wide call,
        which reaches every namespace, is the operator's: ``store.index.revoke(...)``.

        Returns:
            The :class:`RevocationReport`; ``removed`` lists the ``(namespace, id)`` pairs purged.
        """
        return self.index.revoke(content_hash=content_hash, manifest_id=manifest_id, reason=reason,
                                 namespace=self.namespace)

    def search_quarantine(self, query: str, k: int = 10) -> list[Document]:
        """What the guard withheld in this namespace, nearest first, for review (never served)."""
        hits = self.index.search_quarantine(query, namespace=self.namespace, k=k)
        return [hit_document(h) for h in hits]
