"""Tenant isolation as a property, at scale: 100k seeded queries through the core, and a share of
them through the LangChain and LlamaIndex faces (each with its own FAISS and with a shared base
store), over an adversarial multi-tenant corpus. Zero leaks is the only passing result.

It is the harness of ``tests/test_isolation_property.py`` (``guarded_retriever.testing``), run
larger: see that module for what the corpus, the queries and a leak are.

    .venv/bin/python benchmarks/isolation_property.py                  # 100k core queries
    .venv/bin/python benchmarks/isolation_property.py --queries 20000 --face-queries 2000 --seed 7

Exit status 1 when any leak or failure is found.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import guarded_retriever as gr
from guarded_retriever import testing as gt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=100_000, help="core queries (default 100000)")
    parser.add_argument("--face-queries", type=int, default=5_000,
                        help="queries per adapter face and dense side (default 5000; 0 skips the faces)")
    parser.add_argument("--tenants", type=int, default=60, help="namespaces in the corpus (at most 90)")
    parser.add_argument("--max-docs", type=int, default=80, help="most documents per namespace")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    world = gt.make_world(args.seed, tenants=args.tenants, max_docs=args.max_docs, id_pool=args.max_docs + 20)
    queries = gt.make_queries(world, args.queries, seed=args.seed + 1)
    print(f"corpus: {len(world.docs)} namespaces, {world.total} documents, {len(world.batches)} batches; "
          f"seed {args.seed}")
    reports: list[gt.IsolationReport] = []

    def timed(label: str, run: Callable[[], gt.IsolationReport]) -> None:
        start = time.perf_counter()
        report = run()
        elapsed = time.perf_counter() - start
        reports.append(report)
        print(f"{report.summary()}  [{elapsed:.1f} s, {1e3 * elapsed / max(1, report.queries):.2f} ms/query]")
        for line in [*report.leaks[:5], *report.failures[:5]]:
            print(f"    {line}")

    start = time.perf_counter()
    index = gr.GuardedIndex(gr.HashingEmbedder(64), policy=gr.TrustPolicy(manifest_required=False))
    gt.populate(index, world)
    print(f"ingest: {time.perf_counter() - start:.1f} s")
    rate = gt.unfenced_foreign_rate(world, queries[:2_000])
    print(f"sanity: without the fence, {100 * rate:.1f}% of answerable queries would reach another tenant's documents")
    timed("core", lambda: gt.run_isolation(world, queries, gt.core_searcher(index), face="core",
                                           complete_up_to=index.config.candidates))
    print(f"core namespace_violations counter: {index.stats['namespace_violations']}")
    n = args.face_queries
    if n:
        face_queries = queries[:n]
        for base_store in (False, True):
            side = "shared base store" if base_store else "own FAISS"
            search, _ = gt.langchain_searcher(world, base_store=base_store)
            timed("langchain", lambda s=search, side=side: gt.run_isolation(
                world, face_queries, s, face=f"langchain ({side})", strip={"score", "guarded_retriever"}))
            search, _ = gt.llamaindex_searcher(world, base_store=base_store)
            timed("llamaindex", lambda s=search, side=side: gt.run_isolation(
                world, face_queries, s, face=f"llamaindex ({side})", strip={"guarded_retriever"}))
    total = sum(r.queries for r in reports)
    leaks = sum(len(r.leaks) for r in reports)
    failures = sum(len(r.failures) for r in reports)
    refused = sum(r.refused for r in reports)
    print(f"total: {total} queries, {refused} malformed namespaces refused, {leaks} leaks, {failures} failures")
    return 1 if leaks or failures or rate < 0.5 else 0


if __name__ == "__main__":
    sys.exit(main())
