"""Incident response on a live index: revoke, export suspects, rebuild, verify.

Each is a :class:`GuardedIndex` method too, and a ``guarded-retriever`` subcommand over a saved
index. They share one rule: the ledger and the indexes move together, under the index's write lock
and inside one ledger transaction, so a crash half-way leaves the old state, never a mix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._canonical import tokenize
from ._dense import check_vectors
from ._exceptions import ConfigError
from ._fingerprint import fingerprint64, is_legacy_hash
from ._ledger import check_reason
from ._policy import source_domain
from ._store import Shard

if TYPE_CHECKING:
    from ._index import GuardedIndex

__all__ = ["RevocationReport", "VerifyReport", "export_suspects", "rebuild", "revoke", "verify"]

logger = logging.getLogger("guarded_retriever")


@dataclass(frozen=True, slots=True)
class RevocationReport:
    """What a revocation removed, what sat next to it, and how long the purge took."""

    kind: Literal["content_hash", "manifest"]
    value: str
    removed: tuple[tuple[str, str], ...]
    """``(namespace, doc_id)`` of every stored document the revocation covered (main and quarantine)."""
    neighbours: tuple[tuple[str, str], ...]
    """Surviving documents among the removed ones' nearest dense neighbours: what to review next."""
    reembedded: int
    """How many of those neighbours got fresh vectors (only with an embedder)."""
    seconds: float
    """Time from the call to the last index and ledger purge."""
    withheld: tuple[tuple[str, str], ...] = ()
    """``(namespace, content_hash)`` of everything refused from now on (``("*", hash)``: in every
    namespace): a manifest revocation withholds exactly the texts ingested under it."""
    namespace: str | None = None
    """The namespace the revocation was scoped to; ``None`` for an index-wide one."""


def revoke(
    index: GuardedIndex,
    *,
    content_hash: str | None = None,
    manifest_id: str | None = None,
    reason: str = "revoked",
    embedder: Any = None,
    neighbours: int = 5,
    namespace: str | None = None,
) -> RevocationReport:
    """Revoke one content hash or one manifest everywhere (or, with ``namespace``, in that
    namespace's shards only): BM25, dense, quarantine, caches, ledger."""
    t0 = time.perf_counter()
    check_reason(reason)
    if (content_hash is None) == (manifest_id is None):
        raise ConfigError("revoke exactly one of content_hash= or manifest_id=")
    if content_hash is not None:
        check_content_hash(content_hash)
    if manifest_id is not None and not _is_hex(manifest_id, 32):
        raise ConfigError(f"manifest_id must be 32 lowercase hex digits, got {manifest_id!r}")
    kind: Literal["content_hash", "manifest"] = "content_hash" if content_hash is not None else "manifest"
    value = content_hash if content_hash is not None else manifest_id
    assert value is not None
    field_name = "content_hash" if kind == "content_hash" else "manifest_id"
    with index._write_lock:
        hits: list[tuple[Shard, int]] = [
            (shard, pos)
            for partition in (index.main, index.quarantine)
            for key, shard in partition.shards.items() if namespace is None or key == namespace
            for pos in shard.positions.values()
            if getattr(shard.rows[pos], field_name) == value
        ]
        removed_keys = {(shard.namespace, shard.rows[pos].id) for shard, pos in hits}
        near: dict[tuple[str, str], tuple[Shard, int]] = {}
        for shard, pos in hits:
            if shard is index.quarantine.shards.get(shard.namespace):
                continue  # quarantined text was never served: its neighbours are not suspect
            rows, _ = shard.dense.search(shard.dense.vectors[pos], neighbours + 1)
            for r in rows.tolist():
                key = (shard.namespace, shard.rows[r].id)
                if key not in removed_keys:
                    near[key] = (shard, r)
        removed = tuple(sorted(removed_keys))
        # Embed first: an embedder that fails must fail the revocation before anything is purged,
        # not leave a purge that reports itself as an error.
        items = sorted(near.items())
        fresh = None
        if embedder is not None and items:
            from ._embed import as_embedder

            texts = [shard.rows[r].text for _, (shard, r) in items]
            fresh = check_vectors(as_embedder(embedder).embed_documents(texts), index.dim, len(texts))
        with index.ledger.transaction() as tx:
            withheld = index.ledger.revoke(kind, value, reason, purge=removed, conn=tx, namespace=namespace)
            for shard, pos in hits:
                doc_id = shard.rows[pos].id
                shard.discard(doc_id)
                index.pipeline.forget(shard.namespace, doc_id)
        reembedded = 0
        if fresh is not None:
            for (_, (shard, r)), vec in zip(items, fresh, strict=True):
                shard.dense.replace(r, vec)
                shard.mark_stale()
            reembedded = len(items)
    seconds = time.perf_counter() - t0
    index.ledger.audit("revocation_purged", namespace, revoked=kind, value=value, removed=len(removed),
                       neighbours=len(near), reembedded=reembedded, seconds=round(seconds, 6))
    index.emit(logging.WARNING, "revocation", kind=kind, value=value, namespace=namespace,
               removed=len(removed), withheld=len(withheld), neighbours=len(near), seconds=round(seconds, 6))
    return RevocationReport(kind, value, removed, tuple(sorted(near)), reembedded, seconds,
                            tuple(withheld), namespace)


def _is_hex(value: object, n: int) -> bool:
    return isinstance(value, str) and len(value) == n and all(c in "0123456789abcdef" for c in value)


def check_content_hash(value: object) -> None:
    """Refuse anything but a 32-hex BLAKE2b content hash, and say what to do with an old xxh64 one.

    Raises:
        ConfigError: ``value`` is a 16-hex xxh64 hash of earlier versions, or not a content hash.
    """
    if is_legacy_hash(value):
        raise ConfigError(
            f"{value!r} is a 16-digit xxh64 hash: content hashes are now 32-digit BLAKE2b digests, "
            "because an xxh64 twin of another tenant's text is cheap to build. Find the document "
            "with export_suspects(fingerprint=...) (or by id) and revoke its 'content_hash'")
    if not _is_hex(value, 32):
        raise ConfigError(f"content_hash must be 32 lowercase hex digits (BLAKE2b-128), got {value!r}")


def export_suspects(
    index: GuardedIndex,
    *,
    content_hash: str | None = None,
    manifest_id: str | None = None,
    domain: str | None = None,
    reason: str | None = None,
    include_main: bool = True,
    fingerprint: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Stored documents matching every given filter, as JSON-ready dicts (quarantine first).

    ``domain`` matches the source URL's host and its subdomains; ``reason`` a poison reason;
    ``fingerprint`` the xxh64 of the canonical text (to find what an old report named: several
    texts can share one, so revoke what it finds by ``content_hash``, never by fingerprint).
    """
    if content_hash is not None:
        check_content_hash(content_hash)
    want_domain = source_domain(f"https://{domain}") if domain else None
    partitions = [index.quarantine, index.main] if include_main else [index.quarantine]
    for partition in partitions:
        for key, shard in sorted(partition.shards.items()):
            for pos in sorted(shard.positions.values()):
                row = shard.rows[pos]
                if content_hash is not None and row.content_hash != content_hash:
                    continue
                if fingerprint is not None and fingerprint64(row.canonical) != fingerprint:
                    continue
                if manifest_id is not None and row.manifest_id != manifest_id:
                    continue
                if reason is not None and reason not in row.reasons:
                    continue
                if want_domain is not None:
                    host = source_domain(row.source_url)
                    if host != want_domain and not host.endswith("." + want_domain):
                        continue
                yield {"namespace": key, "id": row.id, "partition": partition.name,
                       "content_hash": row.content_hash, "fingerprint": fingerprint64(row.canonical),
                       "manifest_id": row.manifest_id,
                       "source_url": row.source_url, "provenance": row.provenance, "poison": row.poison,
                       "reasons": list(row.reasons), "text": row.text, "metadata": dict(row.metadata)}


def rebuild(index: GuardedIndex) -> dict[str, int]:
    """Compact every shard (drop tombstones, retrain FAISS); returns live rows per namespace."""
    counts: dict[str, int] = {}
    with index._write_lock:
        for partition in (index.main, index.quarantine):
            for key, old in list(partition.shards.items()):
                assert index.dim is not None
                alive = sorted(old.positions.values())
                fresh = Shard(key, index.dim, k1=old.bm25.k1, b=old.bm25.b, kind=old.dense.kind)
                vectors = old.dense.vectors
                for pos in alive:
                    row = old.rows[pos]
                    fresh.add(row, tokenize(row.canonical), vectors[pos])
                partition.shards[key] = fresh
                counts[key] = counts.get(key, 0) + len(alive)
    index.ledger.audit("rebuilt", None, documents=sum(counts.values()))
    return counts


@dataclass(slots=True)
class VerifyReport:
    """Acceptance on gold queries: each query's coverage of its expected ids and its ΔS."""

    passed: bool
    queries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def coverage(self) -> float:
        values = [q["coverage"] for q in self.queries if q["coverage"] is not None]
        return float(np.mean(values)) if values else 1.0


def verify(
    index: GuardedIndex,
    gold: Iterable[Mapping[str, Any]],
    *,
    k: int = 5,
    max_delta_s: float = 0.6,
    min_coverage: float = 1.0,
) -> VerifyReport:
    """Re-run acceptance: every gold query must keep its expected ids and stay under ``max_delta_s``.

    A gold query is ``{"query", "namespace", "expect": [ids] (optional), "query_vector" (optional)}``.
    """
    report = VerifyReport(passed=True)
    for item in _gold_items(gold):
        result = index.search(item["query"], namespace=item["namespace"], k=k,
                              query_vector=item.get("query_vector"))
        kept = [h.id for h in result.kept]
        expect = list(item.get("expect") or [])
        coverage = len(set(expect) & set(kept)) / len(expect) if expect else None
        ds = result.delta_s["quarantine"]
        ok = ds <= max_delta_s and (coverage is None or coverage >= min_coverage)
        report.passed &= ok
        report.queries.append({"query": item["query"], "namespace": result.namespace, "kept": kept,
                               "coverage": coverage, "delta_s": ds, "lambda_state": result.lambda_state,
                               "passed": ok})
    return report


def _gold_items(gold: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The gold queries, each checked for the keys :func:`verify` reads, before any is run.

    Raises:
        ConfigError: ``gold`` is not a list of mappings with ``query`` and ``namespace`` (and an
            ``expect`` that is a list of ids, when given).
    """
    if isinstance(gold, str | bytes | Mapping) or not isinstance(gold, Iterable):
        raise ConfigError(f"gold must be a list of {{'query', 'namespace', 'expect'}} mappings, "
                          f"got {type(gold).__name__}")
    items = list(gold)
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or "query" not in item or "namespace" not in item:
            raise ConfigError(f"gold query {i} must be a mapping with 'query' and 'namespace' "
                              "(and optionally 'expect' and 'query_vector')")
        expect = item.get("expect")
        if expect is not None and (isinstance(expect, str) or not isinstance(expect, list | tuple)
                                   or not all(isinstance(e, str) for e in expect)):
            raise ConfigError(f"gold query {i}: 'expect' must be a list of document ids")
    return items
