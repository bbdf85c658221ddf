"""``GuardedDocumentCompressor``: the guard as a postprocessor of any retriever's documents."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Self

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict
from typing_extensions import override

from .._canonical import canonicalize
from .._fingerprint import content_hash
from .._index import GuardedIndex, SearchResult
from .._ingest import GuardDocument
from ._common import GUARD_KEY, NamespaceLike, bind_namespace, hit_document
from ._events import aemit, emit, events_for

__all__ = ["GuardedDocumentCompressor"]


class GuardedDocumentCompressor(BaseDocumentCompressor):
    """Fence, score and quarantine the documents another retriever found.

    Use it where the documents come from a retriever the guard does not own, for instance as
    ``ContextualCompressionRetriever(base_compressor=..., base_retriever=...)`` or after an
    ``EnsembleRetriever``. Each document is:

    * judged by its ingest record when the index holds it (same id and text) in the namespace;
    * otherwise admitted only if its metadata carries every namespace key (``tenant_id``,
      ``product_id``, ``env`` by default) with exactly the bound namespace's value, and then
      scored from its text alone; anything else is dropped and reported as a
      ``guarded_retriever.namespace_violation`` event;
    * withheld when its poison score reaches τ (a ``guarded_retriever.quarantine`` event).

    Kept documents come back in the order given (a postprocessor filters, it does not re-rank),
    with ``metadata["score"]`` (the upstream ``score`` when there was one, else the dense cosine)
    and the guard's entry under ``metadata_key``. A document without an id gets one derived from its
    content hash.

    Args:
        index: the guard's index (its embedder scores documents it does not hold).
        namespace: the bound namespace; required.
        metadata_key: the metadata entry for the guard's details (``None``: only ``score``).
        score_key: the metadata key that holds the upstream retriever's score, if any.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: GuardedIndex
    """The guard's index."""
    namespace: str
    """The bound namespace (a ``Namespace``, a mapping or a canonical key; stored as the key)."""
    metadata_key: str | None = GUARD_KEY
    """The metadata entry for the guard's details; ``None`` keeps only ``metadata["score"]``."""
    score_key: str | None = "score"
    """Where upstream documents carry their retriever's score."""

    def __init__(self, **data: Any) -> None:
        # Bind before pydantic sees it, so a bad namespace raises NamespaceError itself.
        if data.get("namespace") is not None and isinstance(data.get("index"), GuardedIndex):
            data["namespace"] = bind_namespace(data["index"], data["namespace"])
        super().__init__(**data)

    def for_namespace(self, namespace: NamespaceLike) -> Self:
        """A copy bound to ``namespace``, sharing the index."""
        return self.model_copy(update={"namespace": bind_namespace(self.index, namespace)})

    def _inputs(
        self, documents: Sequence[Document]
    ) -> tuple[list[GuardDocument], list[float | None]]:
        docs: list[GuardDocument] = []
        scores: list[float | None] = []
        for d in documents:
            doc_id = (
                d.id if d.id is not None else f"sha:{content_hash(canonicalize(d.page_content))}"
            )
            docs.append(GuardDocument(str(doc_id), d.page_content, d.metadata))
            upstream = d.metadata.get(self.score_key) if self.score_key is not None else None
            if isinstance(upstream, int | float) and not isinstance(upstream, bool):
                scores.append(float(upstream))
            else:
                scores.append(None)
        return docs, scores

    def _screen(self, documents: Sequence[Document], query: str) -> SearchResult:
        docs, scores = self._inputs(documents)
        return self.index.screen(query, docs, namespace=self.namespace, scores=scores)

    def _outputs(self, result: SearchResult) -> list[Document]:
        return [hit_document(h, guard_key=self.metadata_key) for h in result.kept]

    @override
    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        result = self._screen(documents, query)
        emit(events_for(result, source="screen"), callbacks)
        return self._outputs(result)

    @override
    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        result = await run_in_executor(None, partial(self._screen, documents, query))
        await aemit(events_for(result, source="screen"), callbacks)
        return self._outputs(result)
