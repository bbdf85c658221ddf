"""Guard-pass throughput at ingest (no embedding): documents per second on one core.

Usage:
    python benchmarks/ingest_throughput.py [--bundle ../shared/redteam/dev] [--batch 1000] [--passes 3]
                                           [--profile N]

Each pass ingests the whole bundle, tenant by tenant, in signed batches through a fresh
``IngestPipeline`` with an on-disk WAL ledger. It times, per pass: ``prepare`` (manifest verify,
canonicalise, fingerprint, poison features, routing) and ``prepare + commit`` (plus the ledger
transaction). The manifests are signed before the clock starts: signing is the crawler's job.
Target (issue 3): >= 8,000 docs/s for the guard pass on one core.

Wall-clock rates fall when other processes share the cores; the CPU-time rate (this process's
CPU seconds for prepare + commit) moves much less, so compare versions on both, side by side.
``--profile N`` runs one more pass under cProfile and prints the N functions with the most own time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import guarded_retriever as gr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parents[2] / "shared/redteam/dev")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="profile one more pass and print the N functions with the most own time")
    args = ap.parse_args()

    by_tenant: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with open(args.bundle / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            by_tenant[row["metadata"]["tenant"]].append((row["_id"], row["text"]))
    n_docs = sum(len(v) for v in by_tenant.values())
    chars = sum(len(t) for v in by_tenant.values() for _, t in v)

    signer = gr.ManifestSigner.generate()
    batches = []
    for tenant, docs in by_tenant.items():
        ns = gr.Namespace.of(tenant_id=tenant, product_id="bench", env="dev")
        for i in range(0, len(docs), args.batch):
            chunk = docs[i : i + args.batch]
            manifest = signer.sign_texts([t for _, t in chunk], source_type="web",
                                         source_url=f"https://{tenant}.example.org/crawl", hsts=True)
            batches.append((ns, chunk, manifest))
    policy = gr.TrustPolicy(trusted_signers={signer.public_key}, allowed_domains={"example.org"})

    def one_pass() -> tuple[float, float, float, int]:
        """Seconds in prepare, in commit, CPU seconds in both, and the documents quarantined."""
        with tempfile.TemporaryDirectory() as tmp:
            pipeline = gr.IngestPipeline(ledger=gr.Ledger(Path(tmp) / "ledger.db"), policy=policy)
            t_prepare = t_commit = cpu = 0.0
            for ns, chunk, manifest in batches:
                c0 = time.process_time()
                t0 = time.perf_counter()
                batch = pipeline.prepare(chunk, namespace=ns, manifest=manifest)
                t1 = time.perf_counter()
                pipeline.commit(batch)
                pipeline.after_commit(batch)
                t2 = time.perf_counter()
                cpu += time.process_time() - c0
                t_prepare += t1 - t0
                t_commit += t2 - t1
            quarantined = pipeline.ledger.count("quarantine")
            pipeline.ledger.close()
        return t_prepare, t_commit, cpu, quarantined

    prepare_rates, total_rates, cpu_rates = [], [], []
    for _ in range(args.passes):
        t_prepare, t_commit, cpu, quarantined = one_pass()
        prepare_rates.append(n_docs / t_prepare)
        total_rates.append(n_docs / (t_prepare + t_commit))
        cpu_rates.append(n_docs / cpu)

    p, t = statistics.median(prepare_rates), statistics.median(total_rates)
    print(f"bundle: {args.bundle} ({n_docs} documents, {chars / n_docs:.0f} chars on average)")
    print(f"batches of {args.batch}, {args.passes} passes, quarantined at ingest: {quarantined}")
    print(f"guard pass (prepare):          {p:>9,.0f} docs/s  ({1e6 / p:.1f} µs/doc)  "
          f"passes: {', '.join(f'{r:,.0f}' for r in prepare_rates)}")
    print(f"guard pass + ledger (commit):  {t:>9,.0f} docs/s  ({1e6 / t:.1f} µs/doc)  "
          f"passes: {', '.join(f'{r:,.0f}' for r in total_rates)}")
    c = statistics.median(cpu_rates)
    print(f"guard pass + ledger, CPU time: {c:>9,.0f} docs/s  ({1e6 / c:.1f} µs/doc)  "
          f"passes: {', '.join(f'{r:,.0f}' for r in cpu_rates)}")
    print(f"target 8,000 docs/s: {'met' if t >= 8000 else 'MISSED'} (ratio {t / 8000:.2f}x)")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(one_pass)
        print()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
