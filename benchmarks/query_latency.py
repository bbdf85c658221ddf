"""Per-query latency of guarded search: 10k documents (the dev bundle's real MiniLM vectors) or
N seeded synthetic documents (Zipfian text, clustered vectors).

Usage:
    python benchmarks/query_latency.py [--bundle ../shared/redteam/dev] [--rounds 5]
    python benchmarks/query_latency.py --synthetic 100000 [--rounds 3]

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
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import guarded_retriever as gr
from guarded_retriever._fusion import weighted_rrf
from guarded_retriever.redteam import load_bundle


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def synthetic(n: int, n_queries: int = 200, dim: int = 384, seed: int = 7
              ) -> tuple[list[dict], list[dict], np.ndarray, np.ndarray]:
    """``n`` documents of Zipfian words around 2,000 topic clusters, and queries drawn from them."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(30_000)]
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.07
    weights /= weights.sum()
    centroids = rng.standard_normal((2000, dim)).astype(np.float32)
    topic = rng.integers(0, len(centroids), size=n)
    vecs = centroids[topic] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    lengths = rng.integers(30, 90, size=n)
    words = rng.choice(len(vocab), size=int(lengths.sum()), p=weights)
    docs, start = [], 0
    for i, length in enumerate(lengths.tolist()):
        docs.append({"_id": f"s{i}", "text": " ".join(vocab[w] for w in words[start:start + length]),
                     "metadata": {"tenant": "synthetic"}})
        start += length
    picks = rng.choice(n, size=n_queries, replace=False)
    queries, qvecs = [], []
    for j, i in enumerate(picks.tolist()):
        toks = docs[i]["text"].split()
        queries.append({"_id": f"q{j}", "text": " ".join(rng.choice(toks, size=min(5, len(toks)), replace=False)),
                        "metadata": {"tenant": "synthetic"}})
        q = vecs[i] + 0.5 * rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim) * 10
        qvecs.append(q / np.linalg.norm(q))
    return docs, queries, vecs, np.asarray(qvecs, dtype=np.float32)


class _Replay:
    """Stand-ins for a shard's engines that answer recorded queries from a cache."""

    def __init__(self, shard: "gr._store.Shard") -> None:  # noqa: UP037
        self.shard = shard
        self._bm25: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._dense: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
        self.current: tuple[str, ...] = ()  # the query being replayed
        outer = self

        class BM25:
            def top_with(self, tokens: list[str], k: int, also: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                return outer._bm25[tuple(tokens)]

        class Dense:
            vectors = shard.dense.vectors

            def search(self, v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
                return outer._dense[outer.current]

            def similarity(self, v: np.ndarray, rows: np.ndarray) -> np.ndarray:
                return outer._real_dense.similarity(v, rows)

        self.bm25, self.dense = BM25(), Dense()
        self._real_bm25, self._real_dense = shard.bm25, shard.dense

    def record(self, tokens: tuple[str, ...], v: np.ndarray) -> None:
        qv = np.asarray(v, dtype=np.float32) / np.linalg.norm(v)
        self._dense[tokens] = self._real_dense.search(qv, 50)
        self._bm25[tokens] = self._real_bm25.top_with(list(tokens), 50, self._dense[tokens][0].astype(np.int32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parents[2] / "shared/redteam/dev")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--synthetic", type=int, default=0, help="use N seeded synthetic documents instead")
    args = ap.parse_args()

    if args.synthetic:
        docs, queries, doc_vecs, query_vecs = synthetic(args.synthetic)
        label = f"synthetic {args.synthetic}"
    else:
        bundle = load_bundle(args.bundle)
        docs, queries = bundle.docs, bundle.queries
        doc_vecs, query_vecs = np.asarray(bundle.doc_vectors), np.asarray(bundle.query_vectors)
        label = f"bundle {args.bundle.name}"

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

    # "guard only": the same guarded search with both engines replayed from a per-query cache,
    # so what remains is the guard's own work (fusion, query-time guard, asserts, quarantine
    # look-up, ΔS, hits) and not the engines' noise, which the paired difference above carries.
    replay = {key: _Replay(shard) for key, shard in index.main.shards.items()}
    for q, v in zip(queries, query_vecs, strict=True):
        shard = index.main.shards[gr.Namespace.of(**ns_of(q)).key]
        tokens = tuple(gr.tokenize(gr.canonicalize(q["text"])))
        replay[shard.namespace].record(tokens, v)

    def guard_only(q: dict, v: np.ndarray) -> list[str]:
        key = gr.Namespace.of(**ns_of(q)).key
        shard = index.main.shards[key]
        real_bm25, real_dense = shard.bm25, shard.dense
        replay[key].current = tuple(gr.tokenize(gr.canonicalize(q["text"])))
        shard.bm25, shard.dense = replay[key].bm25, replay[key].dense  # type: ignore[assignment]
        try:
            return guarded(q, v)
        finally:
            shard.bm25, shard.dense = real_bm25, real_dense

    times: dict[str, list[float]] = {"raw": [], "guarded": [], "guard only": []}
    overhead: list[float] = []
    stacks = [("raw", raw), ("guarded", guarded), ("guard only", guard_only)]
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

    print(f"{label}: {len(docs)} documents ({', '.join(f'{t} {len(r)}' for t, r in by_tenant.items())}),"
          f" {len(queries)} queries x {args.rounds} rounds, k={args.k}; ingest+index build {build:.2f} s")
    print(f"{'stack':<12}{'p50 ms':>10}{'p95 ms':>10}")
    for name in ("raw", "guarded", "guard only"):
        print(f"{name:<12}{statistics.median(times[name]):>10.3f}{percentile(times[name], 95):>10.3f}")
    ratio = statistics.median(times["guarded"]) / statistics.median(times["raw"])
    print(f"guard overhead per query (paired guarded - raw): p50 {statistics.median(overhead):.3f} ms,"
          f" p95 {percentile(overhead, 95):.3f} ms; guarded/raw p50 ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()
