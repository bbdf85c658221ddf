"""Test doubles and test harnesses for users' notebooks and tests: deterministic, offline.

* :class:`HashingEmbedder`, a dependency-free embedder.
* The tenant-isolation property harness: :func:`make_world` builds a seeded multi-tenant corpus
  whose texts and ids overlap across tenants on purpose, with adversarial metadata (namespace keys
  of *other* tenants smuggled into user metadata); :func:`make_queries` draws requests, with valid,
  unknown and malformed namespaces (missing, ``None``, empty, case variants, homoglyphs, ...) and
  ``k`` up to far above a tenant's size; :func:`run_isolation` checks every returned hit against the
  generator's own ground truth (who wrote which id, text and metadata), never against the
  package's view of it. The searchers (:func:`core_searcher`, :func:`langchain_searcher`,
  :func:`llamaindex_searcher`) put the core and both adapters behind the same check; the adapters
  are imported only when their searcher is built.

The harness backs ``tests/test_isolation_property.py`` (CI) and ``benchmarks/isolation_property.py``
(100k queries); run it against your own configuration the same way.

* :func:`state_digest`, a sha256 over the ledger and every shard: equal before and after a
  rejected call means it left nothing behind.
"""

from __future__ import annotations

from .._embed import HashingEmbedder
from ._isolation import (
    IsolationQuery,
    IsolationReport,
    IsolationWorld,
    WorldDoc,
    core_searcher,
    invalid_namespaces,
    langchain_searcher,
    llamaindex_searcher,
    make_queries,
    make_world,
    namespace_key,
    populate,
    run_isolation,
    unfenced_foreign_rate,
)
from ._state import state_digest

__all__ = [
    "HashingEmbedder",
    "IsolationQuery",
    "IsolationReport",
    "IsolationWorld",
    "WorldDoc",
    "core_searcher",
    "invalid_namespaces",
    "langchain_searcher",
    "llamaindex_searcher",
    "make_queries",
    "make_world",
    "namespace_key",
    "populate",
    "run_isolation",
    "state_digest",
    "unfenced_foreign_rate",
]
