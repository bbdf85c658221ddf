"""Tenant isolation as a property: seeded corpora, namespaces and queries, zero leaks.

The corpus (``guarded_retriever.testing.make_world``) makes isolation hard on purpose: tenants
share one vocabulary and one id pool, some copy each other's texts verbatim, about half of the
documents carry another tenant's namespace keys (or an adapter's own metadata keys) in their user
metadata, and the namespaces include case variants, one-character variants and one-key variants of
each other. Requests come with valid namespaces in every accepted form, with well-formed namespaces
nobody wrote to, and with malformed ones (missing, ``None``, empty, homoglyph, zero-width, padded,
injected ...); ``k`` runs from 1 to far above a tenant's size.

A leak is any returned document (id, text or metadata) that the generator did not write into the
request's namespace, or a malformed namespace that gets an answer instead of ``NamespaceError``.
Ground truth is the generator's, never the package's metadata. The 100k-query run of the same
harness is ``benchmarks/isolation_property.py``.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

import guarded_retriever as gr
from guarded_retriever import testing as gt

CORE_QUERIES = 12_000  # 10k with linear fusion, 2k with RRF
FACE_QUERIES = 1_500  # per face and dense side
LC_STRIP = {"score", "guarded_retriever"}
LI_STRIP = {"guarded_retriever"}


@pytest.fixture(scope="module")
def world() -> gt.IsolationWorld:
    return gt.make_world(seed=10)


@pytest.fixture(scope="module")
def queries(world: gt.IsolationWorld) -> list[gt.IsolationQuery]:
    return gt.make_queries(world, CORE_QUERIES, seed=11)


def _core(world: gt.IsolationWorld, **config: Any) -> gr.GuardedIndex:
    index = gr.GuardedIndex(gr.HashingEmbedder(64), config=gr.GuardConfig(**config),
                            policy=gr.TrustPolicy(manifest_required=False))
    gt.populate(index, world)
    return index


def _assert_clean(report: gt.IsolationReport, expected: int) -> None:
    assert report.leaks == [], report.summary() + "\n" + "\n".join(report.leaks[:20])
    assert report.failures == [], report.summary() + "\n" + "\n".join(report.failures[:20])
    assert report.queries == expected
    # Every kind of request was exercised, and the fence did not pass by answering nothing.
    assert report.refused > 0.1 * expected and report.unknown > 0.03 * expected
    assert report.answered > 0.6 * expected and report.hits > 2 * report.answered


def test_the_world_is_adversarial(world: gt.IsolationWorld, queries: list[gt.IsolationQuery]) -> None:
    """Sanity: the corpus really overlaps across tenants, so the property test could fail."""
    keys = list(world.docs)
    assert len(keys) == 24 and len(world.namespaces) == len(set(keys))
    lowered = [k.lower() for k in keys]
    assert len(set(lowered)) < len(lowered)  # tenants that differ only by case
    ids = [i for docs in world.docs.values() for i in docs]
    assert len(set(ids)) < 0.5 * len(ids)  # the same ids in many tenants
    texts = [d.text for docs in world.docs.values() for d in docs.values()]
    assert len(set(texts)) < len(texts)  # verbatim copies across tenants
    smuggled = [d for docs in world.docs.values() for d in docs.values()
                if {"tenant_id", "namespace", "_guarded", "guarded_retriever_id"} & set(d.metadata)]
    assert len(smuggled) > 0.3 * world.total
    foreign_keys = [d for d in smuggled if d.metadata.get("tenant_id", "") not in ("", _ns(d.namespace)["tenant_id"])]
    assert len(foreign_keys) > 0.15 * world.total  # another tenant's id in the metadata
    assert any(max(world.size(gt.namespace_key(ns)) for ns in world.namespaces) < q.k for q in queries)
    # Without the fence the same queries reach other tenants' documents almost every time.
    assert gt.unfenced_foreign_rate(world, queries[:600]) > 0.8


def _ns(key: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in key.split("|"))


@pytest.mark.parametrize(("fusion", "share"), [("linear", 10_000), ("rrf", 2_000)])
def test_core_never_leaks(world: gt.IsolationWorld, queries: list[gt.IsolationQuery], fusion: str,
                          share: int) -> None:
    index = _core(world, fusion=fusion)
    batch = queries[:share] if fusion == "linear" else queries[-share:]
    report = gt.run_isolation(world, batch, gt.core_searcher(index), complete_up_to=index.config.candidates)
    _assert_clean(report, share)
    assert report.complete > 0.2 * share  # k >= tenant size returned the whole tenant
    assert index.stats["namespace_violations"] == 0


def test_core_strict_mode_never_raises_a_violation(world: gt.IsolationWorld,
                                                   queries: list[gt.IsolationQuery]) -> None:
    """In strict mode a foreign row at the exit would raise; the shards never produce one."""
    index = _core(world, strict_namespaces=True)
    report = gt.run_isolation(world, queries[:1_000], gt.core_searcher(index))
    _assert_clean(report, 1_000)


@pytest.mark.parametrize("base_store", [False, True], ids=["own-faiss", "in-memory-store"])
def test_langchain_face_never_leaks(world: gt.IsolationWorld, queries: list[gt.IsolationQuery],
                                    base_store: bool) -> None:
    pytest.importorskip("langchain_core")
    search, store = gt.langchain_searcher(world, base_store=base_store)
    report = gt.run_isolation(world, queries[:FACE_QUERIES], search, face="langchain", strip=LC_STRIP)
    _assert_clean(report, FACE_QUERIES)
    assert store.index.stats["namespace_violations"] == 0


@pytest.mark.parametrize("base_store", [False, True], ids=["own-faiss", "simple-vector-store"])
def test_llamaindex_face_never_leaks(world: gt.IsolationWorld, queries: list[gt.IsolationQuery],
                                     base_store: bool) -> None:
    pytest.importorskip("llama_index.core")
    search, retriever = gt.llamaindex_searcher(world, base_store=base_store)
    report = gt.run_isolation(world, queries[-FACE_QUERIES:], search, face="llamaindex", strip=LI_STRIP)
    _assert_clean(report, FACE_QUERIES)
    assert retriever.index.stats["namespace_violations"] == 0


def test_every_malformed_namespace_is_refused_by_every_entry_point(world: gt.IsolationWorld) -> None:
    index = _core(world)
    ns = world.namespaces[0]
    bad = gt.invalid_namespaces(ns, random.Random(3))
    assert len(bad) >= 50
    for value in bad:
        for call in (
            lambda v=value: index.search("password reset", namespace=v, k=3),
            lambda v=value: index.search_quarantine("password reset", namespace=v),
            lambda v=value: index.ids(namespace=v),
            lambda v=value: index.get(["doc-1"], namespace=v),
            lambda v=value: index.screen("password reset", [("doc-1", "password reset", dict(ns))], namespace=v),
            lambda v=value: index.add([("new", "password reset text")], namespace=v),
            lambda v=value: index.delete(["doc-1"], namespace=v),
        ):
            with pytest.raises(gr.NamespaceError):
                call()
    assert len(index) == world.total


# -- the harness itself can fail --------------------------------------------------------------------


def test_the_checker_catches_a_searcher_that_ignores_the_namespace(world: gt.IsolationWorld,
                                                                   queries: list[gt.IsolationQuery]) -> None:
    index = _core(world)
    wrong = world.namespaces[1]

    def leaky(q: gt.IsolationQuery) -> gt.Outcome:
        return gt.core_searcher(index)(gt.IsolationQuery(q.text, wrong, gt.namespace_key(wrong), q.k, q.kind))

    report = gt.run_isolation(world, queries[:300], leaky)
    assert len(report.leaks) > 50


def test_the_checker_catches_answers_to_malformed_namespaces_and_empty_answers(
        world: gt.IsolationWorld, queries: list[gt.IsolationQuery]) -> None:
    def lenient(q: gt.IsolationQuery) -> gt.Outcome:
        return [], []  # answers everything, with nothing

    report = gt.run_isolation(world, queries[:300], lenient, complete_up_to=50)
    assert any("malformed namespace" in leak for leak in report.leaks)
    assert any("got 0 documents" in f for f in report.failures)


def test_the_checker_catches_a_foreign_text_or_foreign_metadata_under_a_local_id(world: gt.IsolationWorld) -> None:
    key_a, key_b = list(world.docs)[:2]
    shared = sorted(set(world.docs[key_a]) & set(world.docs[key_b]))
    doc_a = next(iter(world.docs[key_a].values()))
    doc_b = next(iter(world.docs[key_b].values()))
    query = gt.IsolationQuery("q", _ns(key_a), key_a, 10, "test")
    cases: list[gt.Triple] = [
        (doc_a.id, doc_b.text, doc_a.metadata),
        (doc_a.id, doc_a.text, {**doc_a.metadata, "seq": -1}),
        (doc_b.id, doc_b.text, doc_b.metadata) if doc_b.id not in world.docs[key_a] else (doc_a.id, "x", {}),
    ]
    if shared:
        cases.append((shared[0], world.docs[key_b][shared[0]].text, world.docs[key_b][shared[0]].metadata))
    for triple in cases:
        report = gt.run_isolation(world, [query], lambda _q, t=triple: ([t], []))
        assert len(report.leaks) == 1, triple
    clean = gt.run_isolation(world, [query], lambda _q: ([(doc_a.id, doc_a.text, doc_a.metadata)], []))
    assert clean.leaks == []


def test_llamaindex_answers_an_empty_query_like_the_core(world: gt.IsolationWorld) -> None:
    """Regression: ``retrieve("")`` raised LlamaIndex's bare ``ValueError("No embeddings to
    aggregate")``; the core and the LangChain face answer an empty query (from the query's own
    embedding), and so does the LlamaIndex face now, sync and async."""
    pytest.importorskip("llama_index.core")
    import asyncio

    _, root = gt.llamaindex_searcher(world, base_store=False)
    key = gt.namespace_key(world.namespaces[0])
    retriever = root.for_namespace(key, similarity_top_k=3)
    for text in ("", "   "):
        core = retriever.index.search(text, namespace=key, k=3)
        assert core.kept  # an empty answer on both sides would prove nothing
        nodes = retriever.retrieve(text)
        assert [n.node.node_id for n in nodes] == [h.id for h in core.kept]
        assert [n.node.node_id for n in asyncio.run(retriever.aretrieve(text))] == [h.id for h in core.kept]
