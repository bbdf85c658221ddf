"""``GuardedNodePostprocessor``: the guard for nodes that any other retriever found."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from llama_index.core.bridge.pydantic import Field, model_validator
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from .. import ConfigError, GuardDocument, GuardedIndex, Namespace, SearchResult
from ._events import emit_guard_events
from ._nodes import GUARD_METADATA_KEY, guarded_copy, guarded_text, node_from_hit

__all__ = ["GuardedNodePostprocessor"]

NamespaceLike = Namespace | Mapping[str, Any] | str
_NO_EMBEDDER = ("GuardedNodePostprocessor needs a GuardedIndex with an embedder: it embeds the "
                "query and the nodes the index does not hold")


class GuardedNodePostprocessor(BaseNodePostprocessor):
    """Fence, score and quarantine the nodes of any retriever, for one namespace.

    Put it in ``node_postprocessors`` of a query engine you already run, e.g.
    ``index.as_query_engine(node_postprocessors=[GuardedNodePostprocessor(...)])``. Every node is
    checked by :meth:`GuardedIndex.screen`, which fails closed:

    * a node the index holds in this namespace with the same text is judged by its ingest record
      (provenance, poison, reasons); one the index quarantined stays quarantined;
    * any other node passes the fence only if its metadata carries every namespace key with
      exactly this namespace's value, and is then scored for poison from its text;
    * everything else is dropped and reported in a :class:`NamespaceViolationEvent`.

    Kept nodes keep their order and their upstream score (a postprocessor filters, it does not
    re-rank) and gain the guard's findings under ``metadata_key``, hidden from the LLM and the
    embedder. Nodes with the same ``node_id`` are screened once, at their first position.

    The query is required: the guard checks each node against it (a passage that echoes the
    question, a cluster of paraphrases around it), so a call without one raises ``ValueError``.

    Args:
        index: the guarded index whose ingest records, embedder and poison model judge the
            nodes. It needs an embedder: it embeds the query and any node it does not hold.
        namespace: the namespace every node must belong to.
        metadata_key: the metadata key of the guard's findings on each kept node; ``None``
            returns the nodes with their own metadata only.
    """

    index: GuardedIndex = Field(exclude=True,
                                description="The guarded index that judges the nodes.")
    namespace: str = Field(
        description="The canonical key of the namespace every node must belong to.")
    metadata_key: str | None = Field(
        default=GUARD_METADATA_KEY, min_length=1,
        description="Where kept nodes carry the guard's findings; None leaves nodes unchanged.")

    def __init__(self, *, index: GuardedIndex, namespace: NamespaceLike, **kwargs: Any) -> None:
        # Checked here as well as in the validator, which pydantic would wrap in a ValidationError.
        if not isinstance(index, GuardedIndex):
            raise ConfigError(f"index must be a GuardedIndex, got {type(index).__name__}")
        if index.embedder is None:
            raise ConfigError(_NO_EMBEDDER)
        key = index.pipeline.schema.parse(namespace).key
        super().__init__(index=index, namespace=key, **kwargs)

    @model_validator(mode="after")
    def _check(self) -> GuardedNodePostprocessor:
        # Also runs for model_validate(), which bypasses __init__: the namespace is re-parsed
        # (fail closed), and an index without an embedder is refused now, not on the first query.
        self.namespace = self.index.pipeline.schema.parse(self.namespace).key
        if self.index.embedder is None:
            raise ConfigError(_NO_EMBEDDER)
        return self

    @classmethod
    def class_name(cls) -> str:
        return "GuardedNodePostprocessor"

    def for_namespace(self, namespace: NamespaceLike) -> GuardedNodePostprocessor:
        """The same postprocessor for another namespace."""
        return type(self)(index=self.index, namespace=namespace, metadata_key=self.metadata_key,
                          callback_manager=self.callback_manager)

    def screen(self, nodes: list[NodeWithScore], query: str | QueryBundle | None) -> SearchResult:
        """The full guarded result for ``nodes`` (kept, quarantined, ΔS, alerts, the contract)."""
        return self._screen(_first_of_each(nodes), query)

    def _screen(self, unique: dict[str, NodeWithScore],
                query: str | QueryBundle | None) -> SearchResult:
        if query is None:
            raise ValueError("GuardedNodePostprocessor needs the query (query_bundle or "
                             "query_str): the guard checks every node against it")
        return self.index.screen(
            query if isinstance(query, str) else query.query_str,
            [GuardDocument(i, guarded_text(n.node), n.node.metadata) for i, n in unique.items()],
            namespace=self.namespace,
            scores=[n.score for n in unique.values()],
        )

    def _guard(self, nodes: list[NodeWithScore],
               query_bundle: QueryBundle | None) -> list[NodeWithScore]:
        unique = _first_of_each(nodes)
        result = self._screen(unique, query_bundle)
        emit_guard_events(result, "postprocessor", result.dropped)
        # A node the index holds goes out as the tenant's own record, rebuilt from it: the object
        # given only matched its id and text, and its metadata and fields are the caller's.
        return [NodeWithScore(node=node_from_hit(h, self.metadata_key) if h.held
                              else guarded_copy(unique[h.id].node, h, self.metadata_key),
                              score=unique[h.id].score) for h in result.kept]

    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        return self._guard(nodes, query_bundle)

    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        # Embedding, features and the poison model are CPU or blocking work: off the event loop,
        # whatever the installed llama-index-core's default does.
        return await asyncio.to_thread(self._guard, nodes, query_bundle)


def _first_of_each(nodes: list[NodeWithScore]) -> dict[str, NodeWithScore]:
    """The first node of each ``node_id``, in order: duplicates are screened once."""
    first: dict[str, NodeWithScore] = {}
    for n in nodes:
        first.setdefault(n.node.node_id, n)
    return first
