"""Between the core's hits and LlamaIndex nodes: the guarded text, and the guard's metadata key."""

from __future__ import annotations

from typing import Any

from llama_index.core.schema import BaseNode, MetadataMode, TextNode

from .. import Hit

__all__ = ["GUARD_METADATA_KEY", "guard_fields", "guarded_copy", "guarded_text", "node_from_hit"]

GUARD_METADATA_KEY = "guarded_retriever"
"""The one metadata key under which returned nodes carry the guard's findings (a dict)."""


def guarded_text(node: BaseNode) -> str:
    """The text the guard indexes and judges: the node's content without its metadata.

    This is what a signed manifest must list (``signer.sign_texts([guarded_text(n) for n in
    nodes], ...)``), and what the postprocessor compares with the index's copy of a node.
    """
    return node.get_content(metadata_mode=MetadataMode.NONE)


def guard_fields(hit: Hit) -> dict[str, Any]:
    """What the guard concluded about one hit, as plain JSON-ready values."""
    return {
        "namespace": hit.namespace,
        "content_hash": hit.content_hash,
        "source_url": hit.source_url,
        "manifest_id": hit.manifest_id,
        "scores": hit.scores,
        "reasons": list(hit.reasons),
    }


def _with_key(keys: list[str], key: str) -> list[str]:
    return keys if key in keys else [*keys, key]


def guarded_copy(node: BaseNode, hit: Hit, key: str | None = GUARD_METADATA_KEY) -> BaseNode:
    """A copy of ``node`` that carries ``hit``'s guard fields under ``key``, hidden from the LLM
    and the embedder; with ``key=None``, a plain copy whose ``hash`` equals the node's.

    The stored node is never mutated: it is shared by every query, and a node mutated in place
    would change its ``hash`` and leak one query's scores into the next.
    """
    if key is None:
        return node.model_copy(update={"metadata": dict(node.metadata), "embedding": None})
    return node.model_copy(update={
        "metadata": {**node.metadata, key: guard_fields(hit)},
        "excluded_llm_metadata_keys": _with_key(list(node.excluded_llm_metadata_keys), key),
        "excluded_embed_metadata_keys": _with_key(list(node.excluded_embed_metadata_keys), key),
        "embedding": None,
    })


def node_from_hit(hit: Hit) -> TextNode:
    """A plain node rebuilt from a hit, for documents ingested through the core directly."""
    return TextNode(id_=hit.id, text=hit.text, metadata=dict(hit.metadata))
