"""An offline embed model for tests, examples and notebooks."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from .. import HashingEmbedder

__all__ = ["HashingEmbedding"]


class HashingEmbedding(BaseEmbedding):
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
    _embedder: HashingEmbedder = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        self._embedder = HashingEmbedder(self.dim, self.seed)

    @classmethod
    def class_name(cls) -> str:
        return "GuardedRetrieverHashingEmbedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        vector: Embedding = self._embedder.embed_query(query).tolist()
        return vector

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_query_embedding(text)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        vectors: list[Embedding] = self._embedder.embed_documents(texts).tolist()
        return vectors
