"""``GuardedRetriever``, guarded hybrid retrieval as a LangChain retriever, and its contract."""

from __future__ import annotations

from typing import Any, Literal, Self

import orjson
from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForChainRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever, LangSmithRetrieverParams
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.vectorstores import VectorStore
from pydantic import ConfigDict, Field, PrivateAttr
from typing_extensions import override

from .._contract import validate_contract
from .._index import GuardedIndex, SearchResult
from ._common import (
    GUARD_KEY,
    GuardedSearch,
    NamespaceLike,
    bind_namespace,
    hit_document,
    resolve_namespace,
)
from ._events import aemit, emit, events_for
from ._stores import Nomination, StoreProfile, StoreSide

__all__ = ["GuardedContract", "GuardedRetriever"]


def _events(result: SearchResult, nomination: Nomination | None) -> list[tuple[str, dict[str, Any]]]:
    return events_for(result, foreign=nomination.foreign if nomination else None)


def _report(
    result: SearchResult,
    nomination: Nomination | None,
    run_manager: CallbackManagerForRetrieverRun | CallbackManagerForChainRun,
) -> None:
    # The events go to the child run, whose handlers are this run's inheritable ones: with none
    # (no tracer, no astream_events, no callbacks) nobody can observe them, and building the
    # child manager and dispatching cost more than the rest of the face.
    if run_manager.inheritable_handlers and (events := _events(result, nomination)):
        emit(events, run_manager.get_child())


async def _areport(
    result: SearchResult,
    nomination: Nomination | None,
    run_manager: AsyncCallbackManagerForRetrieverRun | AsyncCallbackManagerForChainRun,
) -> None:
    if run_manager.inheritable_handlers and (events := _events(result, nomination)):
        await aemit(events, run_manager.get_child())


class GuardedRetriever(BaseRetriever):
    """Guarded hybrid retrieval (BM25 + dense, provenance, poison quarantine) inside one namespace.

    The dense side is the index's own FAISS shards, or any LangChain ``VectorStore`` given as
    ``vectorstore`` (written through :class:`GuardedVectorStore`, which keeps the index and the
    store in step). Poisoned candidates never come back; they are reported through the
    ``guarded_retriever.quarantine`` callback event instead.

    The namespace is bound at construction or with :meth:`for_namespace`.
    ``invoke(q, namespace=...)`` is accepted when nothing is bound, or when it repeats the binding;
    a bound retriever asked for another namespace raises :class:`NamespaceError`. Nothing is ever
    read from ``config``, tracing metadata or the context: composites such as ``EnsembleRetriever``
    drop ``invoke`` keyword arguments, so a child must carry its own binding, and an unbound child
    fails closed there.

    Each ``Document`` has ``id`` set, the user's metadata, ``metadata["score"]`` (the fused score)
    and, unless ``metadata_key`` is ``None``, one entry ``metadata["guarded_retriever"]`` with the
    per-signal scores, the guard's reasons and the provenance. ``Document.__str__`` prints metadata,
    so format documents explicitly (or use :meth:`as_contract`) before they reach a prompt.

    Example:
        ```python
        from guarded_retriever import GuardedIndex
        from guarded_retriever.langchain import GuardedRetriever

        index = GuardedIndex(embeddings)  # any LangChain Embeddings
        index.add(docs, namespace=ns, manifest=signed_manifest)
        retriever = GuardedRetriever(index=index, namespace=ns, k=4)
        retriever.invoke("How do I reset my password?")
        retriever.invoke("How do I reset my password?", k=2)
        ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: GuardedIndex
    """The guard's index: BM25, vectors, provenance and poison priors, the ledger."""
    namespace: str | None = None
    """The bound namespace (a ``Namespace``, a mapping or a canonical key; stored as the key)."""
    k: int = Field(default=4, ge=1, le=1000)
    """How many documents to return; ``invoke(q, k=...)`` overrides it per call."""
    vectorstore: VectorStore | None = None
    """The dense side: a base store written through ``GuardedVectorStore``; ``None`` for FAISS."""
    store_profile: StoreProfile | None = None
    """How to read ``vectorstore``'s scores and filter it (by default ``profile_for``)."""
    over_fetch: int = Field(default=4, ge=1)
    """For a store that cannot pre-filter by namespace, the first fetch is this × ``candidates``."""
    max_fetch: int = Field(default=1000, ge=1)
    """The largest fetch the progressive over-fetch may reach."""
    metadata_key: str | None = GUARD_KEY
    """The metadata entry for the guard's details; ``None`` keeps only ``metadata["score"]``."""

    _search_path: GuardedSearch | None = PrivateAttr(default=None)
    _search_inputs: tuple[int, ...] = PrivateAttr(default=())

    def __init__(self, **data: Any) -> None:
        # Accept a Namespace or a mapping and keep the canonical key, validated with the index's
        # own schema (its keys are configurable) before pydantic runs, so that a bad namespace
        # raises NamespaceError itself rather than a pydantic ValidationError.
        if data.get("namespace") is not None and isinstance(data.get("index"), GuardedIndex):
            data["namespace"] = bind_namespace(data["index"], data["namespace"])
        super().__init__(**data)

    @property
    def _search(self) -> GuardedSearch:
        # Built on first use and rebuilt if a field it depends on was reassigned since.
        inputs = (
            id(self.index),
            id(self.vectorstore),
            id(self.store_profile),
            self.over_fetch,
            self.max_fetch,
        )
        cached = self._search_path
        if cached is None or inputs != self._search_inputs:
            side = None
            if self.vectorstore is not None:
                side = StoreSide(
                    self.vectorstore,
                    profile=self.store_profile,
                    query_by_vector=self.vectorstore.embeddings is self.index.embedder,
                    over_fetch=self.over_fetch,
                    max_fetch=self.max_fetch,
                )
            cached = self._search_path = GuardedSearch(self.index, side)
            self._search_inputs = inputs
        return cached

    def for_namespace(self, namespace: NamespaceLike) -> Self:
        """A view of this retriever bound to ``namespace``, sharing its index and store."""
        return self.model_copy(update={"namespace": bind_namespace(self.index, namespace)})

    def as_contract(self, *, output: Literal["dict", "json"] = "dict") -> GuardedContract:
        """A runnable from a query to the cite-then-explain contract (:class:`GuardedContract`)."""
        return GuardedContract(retriever=self, output=output)

    @override
    def _get_ls_params(self, **kwargs: Any) -> LangSmithRetrieverParams:
        params = super()._get_ls_params(**kwargs)
        params["ls_vector_store_provider"] = (
            type(self.vectorstore).__name__ if self.vectorstore is not None else "GuardedIndex"
        )
        embedder = self.index.embedder
        if embedder is not None:
            params["ls_embedding_provider"] = type(embedder).__name__
            model = getattr(embedder, "model", None) or getattr(embedder, "model_name", None)
            if isinstance(model, str):
                params["ls_embedding_model"] = model
        return params

    def _documents(self, result: SearchResult, nomination: Nomination | None) -> list[Document]:
        relevance = nomination.relevance if nomination is not None else {}
        return [
            hit_document(h, guard_key=self.metadata_key, store_relevance=relevance.get(h.id))
            for h in result.kept
        ]

    def _request(self, k: int | None, namespace: NamespaceLike | None) -> tuple[str, int]:
        return resolve_namespace(self.index, self.namespace, namespace), self.k if k is None else k

    @override
    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        namespace: NamespaceLike | None = None,
    ) -> list[Document]:
        """Guarded search; ``k`` and ``namespace`` are the per-call overrides ``invoke`` passes."""
        key, k = self._request(k, namespace)
        result, nomination = self._search.run(query, key, k)
        _report(result, nomination, run_manager)
        return self._documents(result, nomination)

    @override
    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        namespace: NamespaceLike | None = None,
    ) -> list[Document]:
        key, k = self._request(k, namespace)
        result, nomination = await self._search.arun(query, key, k)
        await _areport(result, nomination, run_manager)
        return self._documents(result, nomination)


class GuardedContract(RunnableSerializable[str, Any]):
    """A query in, the cite-then-explain contract out: the guard's step of an LCEL chain.

    It searches like its retriever (same binding, same ``k``; ``invoke(q, k=..., namespace=...)``
    works the same way) and returns the contract, validated against the shipped JSON Schema: a dict,
    or with ``output="json"`` an indented JSON string ready for a prompt.

    Example:
        ```python
        from langchain_core.prompts import ChatPromptTemplate
        from langchain_core.runnables import RunnablePassthrough
        from guarded_retriever import CITE_THEN_EXPLAIN_PROMPT

        chain = (
            {"question": RunnablePassthrough(), "contract": retriever.as_contract(output="json")}
            | ChatPromptTemplate.from_template(CITE_THEN_EXPLAIN_PROMPT)
            | llm
        )
        ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: GuardedRetriever
    """The retriever whose index, binding and dense side the contract is built from."""
    output: Literal["dict", "json"] = "dict"
    """``dict`` for the payload, ``json`` for its indented JSON text."""
    citation_chars: int = Field(default=600, ge=1)
    """How much of each kept passage goes into its ``citation``."""

    def _render(self, result: SearchResult) -> Any:
        payload = validate_contract(result.contract(citation_chars=self.citation_chars))
        if self.output == "json":
            return orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode()
        return payload

    def _contract(
        self,
        query: str,
        run_manager: CallbackManagerForChainRun,
        k: int | None = None,
        namespace: NamespaceLike | None = None,
    ) -> Any:
        key, k = self.retriever._request(k, namespace)
        result, nomination = self.retriever._search.run(query, key, k)
        _report(result, nomination, run_manager)
        return self._render(result)

    async def _acontract(
        self,
        query: str,
        run_manager: AsyncCallbackManagerForChainRun,
        k: int | None = None,
        namespace: NamespaceLike | None = None,
    ) -> Any:
        key, k = self.retriever._request(k, namespace)
        result, nomination = await self.retriever._search.arun(query, key, k)
        await _areport(result, nomination, run_manager)
        return self._render(result)

    @override
    def invoke(self, input: str, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._contract, input, config, **kwargs)

    @override
    async def ainvoke(self, input: str, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._acontract, input, config, **kwargs)
