"""LlamaIndex integration: a guarded retriever and a guarding node postprocessor.

Install it with ``pip install 'guarded-retriever[llamaindex]'``. ``import guarded_retriever`` never
imports LlamaIndex; this module does, when you import it.

* :class:`GuardedRetriever` is a ``BaseRetriever`` over a :class:`~guarded_retriever.GuardedIndex`,
  bound to one namespace, with any LlamaIndex vector store (``SimpleVectorStore``, Qdrant, ...) as
  its dense side.
* :class:`GuardedNodePostprocessor` is a ``BaseNodePostprocessor`` that fences, scores and
  quarantines the nodes of *any* retriever, for an index you already run.
* :class:`QuarantineEvent` and :class:`NamespaceViolationEvent` reach your instrumentation event
  handlers whenever the guard withholds something.
* :class:`EmbedderEmbedding` turns any of the package's embedders (``MiniLMEmbedder``) into a
  LlamaIndex embed model; :class:`HashingEmbedding` is an offline, deterministic one for tests.

Every node either class returns carries the guard's findings under one metadata key,
:data:`GUARD_METADATA_KEY` (``metadata_key=`` changes it, ``None`` leaves the metadata alone), which
is listed in the node's ``excluded_llm_metadata_keys`` and ``excluded_embed_metadata_keys``: the
scores never reach the LLM prompt or an embedder.

Example:
    >>> from llama_index.core.vector_stores import SimpleVectorStore
    >>> from guarded_retriever import GuardedIndex, TrustPolicy
    >>> from guarded_retriever.llamaindex import GuardedRetriever, HashingEmbedding
    >>> embed_model = HashingEmbedding()
    >>> core = GuardedIndex(embed_model, policy=TrustPolicy(manifest_required=False))
    >>> retriever = GuardedRetriever(
    ...     namespace={"tenant_id": "acme", "product_id": "kb", "env": "prod"},
    ...     embed_model=embed_model, index=core, vector_store=SimpleVectorStore())
    >>> from llama_index.core.schema import TextNode
    >>> report = retriever.add_nodes([TextNode(id_="d1", text="Reset your password in Settings.")])
    >>> [n.node_id for n in retriever.retrieve("reset password")]
    ['d1']
"""

from __future__ import annotations

from .._exceptions import MissingExtraError

try:
    import llama_index.core  # noqa: F401  (the extra's one requirement, checked once, here)
except ImportError as exc:
    # Keep the cause: a broken transitive dependency should not read as "not installed" only.
    raise MissingExtraError("llamaindex", "llama_index.core") from exc

from ._embedding import EmbedderEmbedding, HashingEmbedding
from ._events import NamespaceViolationEvent, QuarantineEvent
from ._nodes import GUARD_METADATA_KEY, guarded_text
from ._postprocessor import GuardedNodePostprocessor
from ._retriever import GuardedRetriever

__all__ = [
    "GUARD_METADATA_KEY",
    "EmbedderEmbedding",
    "GuardedNodePostprocessor",
    "GuardedRetriever",
    "HashingEmbedding",
    "NamespaceViolationEvent",
    "QuarantineEvent",
    "guarded_text",
]
