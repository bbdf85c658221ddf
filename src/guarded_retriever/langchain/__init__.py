"""LangChain faces of the guard: a retriever, a vector store, a document compressor and a contract.

Install with ``pip install 'guarded-retriever[langchain]'``; this module is imported explicitly and
never by ``import guarded_retriever``, so the core stays framework-free.

* :class:`GuardedRetriever` (a ``BaseRetriever``): guarded hybrid search inside one namespace, over
  the index's own FAISS shards or any LangChain ``VectorStore`` as the dense side.
* :class:`GuardedVectorStore` (a ``VectorStore``): writes go through the ingest pipeline into a base
  store (kept documents) or a quarantine store; searches go through the guard.
* :class:`GuardedDocumentCompressor` (a ``BaseDocumentCompressor``): guards what any other retriever
  found, e.g. inside ``ContextualCompressionRetriever``.
* :class:`GuardedContract` (a ``Runnable``): a query in, the cite-then-explain contract out.

The namespace is always bound by code: at construction, with ``for_namespace(...)`` or as an
explicit ``namespace=`` argument. It is never read from ``config``, tracing metadata or a context
variable, because those are channels a caller's caller (or a trace exporter) can fill in.

Example:
    >>> from langchain_core.vectorstores import InMemoryVectorStore
    >>> from guarded_retriever import TrustPolicy
    >>> from guarded_retriever.langchain import GuardedVectorStore
    >>> from guarded_retriever.testing import HashingEmbedder
    >>> embedder = HashingEmbedder(dim=64)
    >>> store = GuardedVectorStore(
    ...     InMemoryVectorStore(embedder),
    ...     namespace={"tenant_id": "acme", "product_id": "kb", "env": "prod"},
    ...     policy=TrustPolicy(manifest_required=False),
    ... )
    >>> store.add_texts(["Reset your password from the Settings page."], ids=["d1"])
    ['d1']
    >>> [d.id for d in store.as_guarded_retriever(k=1).invoke("reset password")]
    ['d1']
"""

from __future__ import annotations

from .._exceptions import MissingExtraError

try:
    import langchain_core  # noqa: F401
except ImportError:
    raise MissingExtraError("langchain", "langchain_core") from None

from ._compressor import GuardedDocumentCompressor
from ._events import NAMESPACE_VIOLATION_EVENT, QUARANTINE_EVENT
from ._retriever import GuardedContract, GuardedRetriever
from ._stores import (
    STORE_TAG,
    StoreProfile,
    cosine_relevance,
    distance_relevance,
    inner_product_relevance,
    profile_for,
    register_store_profile,
    store_id,
)
from ._vectorstore import GuardedVectorStore

__all__ = [
    "NAMESPACE_VIOLATION_EVENT",
    "QUARANTINE_EVENT",
    "STORE_TAG",
    "GuardedContract",
    "GuardedDocumentCompressor",
    "GuardedRetriever",
    "GuardedVectorStore",
    "StoreProfile",
    "cosine_relevance",
    "distance_relevance",
    "inner_product_relevance",
    "profile_for",
    "register_store_profile",
    "store_id",
]
