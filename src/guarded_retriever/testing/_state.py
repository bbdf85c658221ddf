"""A digest of an index's whole state, to prove that a rejected call changed nothing."""

from __future__ import annotations

import hashlib
import sqlite3

from .._index import GuardedIndex

__all__ = ["state_digest"]


def state_digest(index: GuardedIndex) -> str:
    """A sha256 over everything a write can change: the ledger's database image, and every shard's
    rows, position map, tombstones, BM25 term lists and vectors, and the near-duplicate index.

    Equal digests before and after a call mean the call left the ledger and the indexes byte for
    byte as they were (``assert state_digest(i) == before`` after a rejected batch). Caches that a
    search rebuilds (postings, FAISS additions) are left out: build them first (search once) if
    the FAISS index should be covered too.
    """
    h = hashlib.sha256()

    def put(*parts: object) -> None:
        for part in parts:
            h.update(part if isinstance(part, bytes) else repr(part).encode("utf-8", "backslashreplace"))
            h.update(b"\x1f")

    image = sqlite3.connect(":memory:")
    try:
        index.ledger.backup_to(image)
        put(image.serialize())
    finally:
        image.close()
    put(index.dim, len(index.main.shards), len(index.quarantine.shards))
    for partition in (index.main, index.quarantine):
        for key in sorted(partition.shards):
            shard = partition.shards[key]
            put(partition.name, key, list(shard.rows), shard.alive, list(shard.positions.items()),
                shard._provenance, shard._poison)
            bm25 = shard.bm25
            put(list(bm25._vocab.items()), bm25._alive)
            for terms, counts in bm25._doc_terms:
                put(terms.tobytes(), counts.tobytes())
            dense = shard.dense
            put(len(dense), sorted(dense.dead_rows()), dense.vectors.tobytes(),
                None if dense._index is None else dense._index.ntotal)
    simhashes = index.pipeline._simhashes  # a cache loaded from the ledger: an empty one is no state
    for key in sorted(simhashes):
        if len(simhashes[key]):
            put(key, sorted(simhashes[key]._hashes.items()))
    return h.hexdigest()
