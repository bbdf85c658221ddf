"""The package's embedders as LlamaIndex embed models: any of them, and an offline one for tests."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from .. import HashingEmbedder

__all__ = ["EmbedderEmbedding", "HashingEmbedding"]


class _CoreEmbedding(BaseEmbedding):
    """A LlamaIndex embed model that delegates to one of the package's embedders (``_embedder``)."""

    _embedder: Any = PrivateAttr()

    def _get_query_embedding(self, query: str) -> Embedding:
        vector: Embedding = [float(x) for x in self._embedder.embed_query(query)]
        return vector

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return [[float(x) for x in row] for row in self._embedder.embed_documents(texts)]


class EmbedderEmbedding(_CoreEmbedding):
    """Any embedder of this package (``MiniLMEmbedder``, ``HashingEmbedder``, or an object with
    ``embed_query`` and ``embed_documents``) as a LlamaIndex embed model, so a LlamaIndex face
    embeds its queries with the very model that embedded the core index's documents.

    Args:
        embedder: the embedder to wrap.
    """

    model_name: str = "guarded-retriever-embedder"

    def __init__(self, embedder: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._embedder = embedder

    @classmethod
    def class_name(cls) -> str:
        return "GuardedRetrieverEmbedderEmbedding"


class HashingEmbedding(_CoreEmbedding):
    """:class:`guarded_retriever.HashingEmbedder` as a LlamaIndex embed model.

    Deterministic, dependency-free and offline: the same vector on every machine, nothing to
    download. It captures lexical overlap only, not meaning, so use it where ``MockEmbedding``'s
    constant vectors would make every document equally near.

    Args:
        dim: the embedding dimension.
        seed: the hashing seed.
    """

    model_name: str = "guarded-retriever-hashing"
    dim: int = Field(default=384, ge=8, description="The embedding dimension.")
    seed: int = Field(default=0, description="The hashing seed.")

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        self._embedder = HashingEmbedder(self.dim, self.seed)

    @classmethod
    def class_name(cls) -> str:
        return "GuardedRetrieverHashingEmbedding"
