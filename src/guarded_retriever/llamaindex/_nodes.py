"""Between the core's hits and LlamaIndex nodes: the guarded text, and the guard's metadata key.

The guard scores and signs a node's content without its metadata (:func:`guarded_text`), but
LlamaIndex renders every metadata key not in ``excluded_llm_metadata_keys`` into the LLM's prompt.
So every node the adapters return hides *all* its metadata from the LLM: what the model reads,
``node.get_content(MetadataMode.LLM)``, is exactly the text the guard judged (issue 20, finding 2).
The metadata is still there for code (citations, filters); a prompt that needs a field should
put it into the node's text before ingest, where it is scored and signed with the rest.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.schema import BaseNode, MetadataMode, TextNode

from .. import Hit

__all__ = [
    "GUARD_METADATA_KEY",
    "guard_fields",
    "guarded_copy",
    "guarded_text",
    "is_plain",
    "node_from_hit",
]

GUARD_METADATA_KEY = "guarded_retriever"
"""The one metadata key under which returned nodes carry the guard's findings (a dict)."""

# What the core's row holds of a node; the embedding is never returned. Every other TextNode field
# has a constant default (only id_'s factory is random, and the row has the id).
_ROW_FIELDS = frozenset({"id_", "text", "metadata", "embedding"})
_PLAIN_DEFAULTS = tuple(
    (name, info.get_default(call_default_factory=True))
    for name, info in TextNode.model_fields.items()
    if name not in _ROW_FIELDS
)


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


def is_plain(node: BaseNode) -> bool:
    """Whether the core's row alone rebuilds ``node`` exactly: a ``TextNode`` whose every field but
    the id, text, metadata and embedding is at its default (no relationships, no templates).

    The adapter keeps only the nodes that are not plain: at 100k nodes the copies cost ~130 MiB,
    and a rebuilt plain node is equal to the one given, ``hash`` included.
    """
    return type(node) is TextNode and all(
        getattr(node, name) == default for name, default in _PLAIN_DEFAULTS
    )


def _with_key(keys: list[str], key: str) -> list[str]:
    return keys if key in keys else [*keys, key]


def _unscored(metadata: dict[str, Any], keys: list[str]) -> list[str]:
    """``keys`` plus every metadata key: none of it was scored, so none of it reaches the LLM."""
    return [*keys, *(k for k in metadata if k not in keys)]


def guarded_copy(node: BaseNode, hit: Hit, key: str | None = GUARD_METADATA_KEY) -> BaseNode:
    """A copy of ``node`` that carries ``hit``'s guard fields under ``key``, hidden from the LLM
    and the embedder; with ``key=None``, a plain copy whose ``hash`` equals the node's. Either way
    every metadata key is hidden from the LLM (see the module docstring).

    The stored node is never mutated: it is shared by every query, and a node mutated in place
    would change its ``hash`` and leak one query's scores into the next.
    """
    if key is None:
        metadata = dict(node.metadata)
        return node.model_copy(update={
            "metadata": metadata, "embedding": None,
            "excluded_llm_metadata_keys": _unscored(metadata, list(node.excluded_llm_metadata_keys))})
    metadata = {**node.metadata, key: guard_fields(hit)}
    return node.model_copy(update={
        "metadata": metadata,
        "excluded_llm_metadata_keys": _unscored(metadata, list(node.excluded_llm_metadata_keys)),
        "excluded_embed_metadata_keys": _with_key(list(node.excluded_embed_metadata_keys), key),
        "embedding": None,
    })


def node_from_hit(hit: Hit, key: str | None = GUARD_METADATA_KEY) -> TextNode:
    """A plain node rebuilt from a hit, carrying its guard fields under ``key`` as
    :func:`guarded_copy` would (built in one step: this runs for most hits of every query).

    Used for plain nodes (see :func:`is_plain`) and for documents ingested through the core
    directly. With ``key=None`` its ``hash`` equals that of the plain node first given.
    """
    if key is None:
        metadata = dict(hit.metadata)
        return TextNode(id_=hit.id, text=hit.text, metadata=metadata, excluded_llm_metadata_keys=list(metadata))
    metadata = {**hit.metadata, key: guard_fields(hit)}
    return TextNode(
        id_=hit.id,
        text=hit.text,
        metadata=metadata,
        excluded_llm_metadata_keys=list(metadata),
        excluded_embed_metadata_keys=[key],
    )
