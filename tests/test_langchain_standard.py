"""LangChain's standard suites (langchain-tests, pinned), run unmodified against the adapters.

The suites' async tests carry no asyncio mark and this project runs pytest-asyncio in strict mode,
so each class is marked ``asyncio`` as a whole (what ``asyncio_mode = "auto"`` would do for it). The
mark on the suites' sync tests only makes pytest-asyncio warn that they are not coroutines; that
one warning is ignored here, nothing else.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore
from langchain_qdrant import QdrantVectorStore
from langchain_tests.integration_tests import (
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)
from qdrant_client import QdrantClient, models

import guarded_retriever as gr
from guarded_retriever.langchain import GuardedRetriever, GuardedVectorStore
from guarded_retriever.testing import HashingEmbedder

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings(
        "ignore:The test <Function test_.*> is marked with '@pytest.mark.asyncio' but it is not "
        "an async function:pytest.PytestWarning"
    ),
]

NS = {"tenant_id": "acme", "product_id": "kb", "env": "test"}
OTHER = {"tenant_id": "globex", "product_id": "kb", "env": "test"}
OPEN = gr.TrustPolicy(manifest_required=False)

ACME = [
    ("a1", "To reset your password open Settings, choose Security and follow the emailed link."),
    ("a2", "A password reset link expires after 24 hours; request a new one if it has expired."),
    ("a3", "Administrators can force a password reset for any member from the admin console."),
    ("a4", "Invoices are issued on the first business day of each month and can be paid by card."),
    ("a5", "The public API allows 600 requests per minute per organisation before throttling."),
]
GLOBEX = [("g1", "Globex staff reset their password at the kiosk on the third floor.")]


@functools.cache
def _corpus_index() -> gr.GuardedIndex:
    index = gr.GuardedIndex(HashingEmbedder(dim=64), policy=OPEN)
    index.add(ACME, namespace=NS)
    index.add(GLOBEX, namespace=OTHER)
    return index


def _store_backed(base: VectorStore, embedding: Any) -> GuardedVectorStore:
    store = GuardedVectorStore(base, namespace=NS, embedding=embedding, policy=OPEN)
    store.add_texts([t for _, t in ACME], ids=[i for i, _ in ACME])
    store.for_namespace(OTHER).add_texts([t for _, t in GLOBEX], ids=[i for i, _ in GLOBEX])
    return store


class TestGuardedRetriever(RetrieversIntegrationTests):
    """Over the index's own FAISS shards."""

    @property
    def retriever_constructor(self) -> type[GuardedRetriever]:
        return GuardedRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"index": _corpus_index(), "namespace": NS}

    @property
    def retriever_query_example(self) -> str:
        return "how do I reset my password"


class TestGuardedRetrieverOverAStore(RetrieversIntegrationTests):
    """Over an ``InMemoryVectorStore`` as the dense side."""

    @property
    def retriever_constructor(self) -> type[GuardedRetriever]:
        return GuardedRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        store = _store_backed_memory()
        return {"index": store.index, "namespace": NS, "vectorstore": store.base}

    @property
    def retriever_query_example(self) -> str:
        return "how do I reset my password"


@functools.cache
def _store_backed_memory() -> GuardedVectorStore:
    embedding = HashingEmbedder(dim=64)
    return _store_backed(InMemoryVectorStore(embedding), embedding)


class TestGuardedVectorStore(VectorStoreIntegrationTests):
    """Sync and async, over ``InMemoryVectorStore``."""

    @pytest.fixture
    def vectorstore(self) -> Iterator[VectorStore]:
        embedding = self.get_embeddings()
        yield GuardedVectorStore(
            InMemoryVectorStore(embedding), namespace=NS, embedding=embedding, policy=OPEN
        )


class TestGuardedVectorStoreOwnIndex(VectorStoreIntegrationTests):
    """Sync and async, with no base store: the index's FAISS is the dense side."""

    @pytest.fixture
    def vectorstore(self) -> Iterator[VectorStore]:
        yield GuardedVectorStore(namespace=NS, embedding=self.get_embeddings(), policy=OPEN)


class TestGuardedVectorStoreQdrant(VectorStoreIntegrationTests):
    """Sync and async, over a real Qdrant in local mode (its point ids must be UUIDs: ours are)."""

    @pytest.fixture
    def vectorstore(self) -> Iterator[VectorStore]:
        embedding = self.get_embeddings()
        client = QdrantClient(":memory:")
        client.create_collection(
            "guarded",
            vectors_config=models.VectorParams(
                size=len(embedding.embed_query("x")), distance=models.Distance.COSINE
            ),
        )
        base = QdrantVectorStore(client, "guarded", embedding)
        try:
            yield GuardedVectorStore(base, namespace=NS, embedding=embedding, policy=OPEN)
        finally:
            client.close()
