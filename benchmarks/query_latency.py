"""Per-query latency of guarded search at 10k documents (the dev bundle's real MiniLM vectors).

Usage:
    python benchmarks/query_latency.py [--bundle ../shared/redteam/dev] [--rounds 5]

Every query runs, in rotating order, through:
  raw      the engines alone on the same shards: BM25 top-50 + FAISS top-50 + dict RRF, k=10
  guarded  ``GuardedIndex.search`` with every guard on (exact cross-scores, linear fusion,
           query-time guard, namespace asserts, quarantine look-up, ΔS per stage), k=10
and the guard's own overhead is the paired difference guarded − raw per query.
Queries use the bundle's precomputed query vectors, so no model runs inside the timings.
FAISS runs on one OpenMP thread (set by the package).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import guarded_retriever as gr
from guarded_retriever._fusion import weighted_rrf


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parents[2] / "shared/redteam/dev")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()

    docs = [json.loads(line) for line in open(args.bundle / "corpus.jsonl", encoding="utf-8")]
    queries = [json.loads(line) for line in open(args.bundle / "queries.jsonl", encoding="utf-8")]
    doc_vecs = np.load(args.bundle / "embeddings/corpus.npy")
    query_vecs = np.load(args.bundle / "embeddings/queries.npy")

    index = gr.GuardedIndex(dim=doc_vecs.shape[1], policy=gr.TrustPolicy(manifest_required=False))
    by_tenant: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(docs):
        by_tenant[d["metadata"]["tenant"]].append(i)
    t0 = time.perf_counter()
    for tenant, rows in by_tenant.items():
        ns = {"tenant_id": tenant, "product_id": "bench", "env": "dev"}
        for s in range(0, len(rows), 1000):
            chunk = rows[s : s + 1000]
            index.add([(docs[i]["_id"], docs[i]["text"]) for i in chunk], namespace=ns, vectors=doc_vecs[chunk])
    build = time.perf_counter() - t0

    def ns_of(q: dict) -> dict[str, str]:
        return {"tenant_id": q["metadata"]["tenant"], "product_id": "bench", "env": "dev"}

    def raw(q: dict, v: np.ndarray) -> list[str]:
        shard = index.main.shards[gr.Namespace.of(**ns_of(q)).key]
        tokens = gr.tokenize(gr.canonicalize(q["text"]))
        b_rows, _ = shard.bm25.top(tokens, 50)
        d_rows, _ = shard.dense.search(v, 50)
        rows = shard.rows
        fused = weighted_rrf([[rows[r].id for r in b_rows.tolist()], [rows[r].id for r in d_rows.tolist()]],
                             [0.5, 0.5])
        return sorted(fused, key=fused.__getitem__, reverse=True)[: args.k]

    def guarded(q: dict, v: np.ndarray) -> list[str]:
        return [h.id for h in index.search(q["text"], namespace=ns_of(q), k=args.k, query_vector=v).kept]

    for q, v in zip(queries, query_vecs, strict=True):  # warm-up: builds the lazy BM25 CSR and FAISS
        raw(q, v), guarded(q, v)
    times: dict[str, list[float]] = {"raw": [], "guarded": []}
    overhead: list[float] = []
    stacks = [("raw", raw), ("guarded", guarded)]
    for rnd in range(args.rounds):
        for qi, (q, v) in enumerate(zip(queries, query_vecs, strict=True)):
            order = stacks if (qi + rnd) % 2 == 0 else stacks[::-1]
            took = {}
            for name, fn in order:
                t = time.perf_counter()
                fn(q, v)
                took[name] = (time.perf_counter() - t) * 1e3
                times[name].append(took[name])
            overhead.append(took["guarded"] - took["raw"])

    print(f"bundle: {args.bundle.name}: {len(docs)} documents ({', '.join(f'{t} {len(r)}' for t, r in by_tenant.items())}),"
          f" {len(queries)} queries x {args.rounds} rounds, k={args.k}; ingest+index build {build:.2f} s")
    print(f"{'stack':<10}{'p50 ms':>10}{'p95 ms':>10}")
    for name in ("raw", "guarded"):
        print(f"{name:<10}{statistics.median(times[name]):>10.3f}{percentile(times[name], 95):>10.3f}")
    ratio = statistics.median(times["guarded"]) / statistics.median(times["raw"])
    print(f"guard overhead per query (paired guarded - raw): p50 {statistics.median(overhead):.3f} ms,"
          f" p95 {percentile(overhead, 95):.3f} ms; guarded/raw p50 ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()
