"""The ingest process that ``test_crash_safety.py`` kills with SIGKILL (run as a script).

It ingests ``batches`` batches of ``size`` documents into an index over the file-backed ledger
``db`` and prints ``ack <i> <batch_id>`` once ``add`` has returned, that is once batch ``i`` is
committed. ``on_commit`` prints ``inflight <i>`` from inside the batch's ledger transaction (rows
written, shards updated, not committed yet); with ``hang_at`` it then sleeps there, so the parent
can kill it exactly mid-batch. With ``snapshots`` it also saves the whole index (signed) to
``snapshots/snap-<i>`` after each batch and prints ``saved <i>``.

Usage: crash_ingest_worker.py DB BATCHES SIZE HANG_AT [SNAPSHOTS]   (HANG_AT -1: never)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import guarded_retriever as gr

NS = {"tenant_id": "acme", "product_id": "kb", "env": "prod"}
SIGNER = gr.ManifestSigner.from_seed(b"\x05" * 32)
WORDS = ("reset", "password", "invoice", "quota", "token", "ledger", "refund", "export", "admin", "tenant")


def doc_ids(batch: int, size: int) -> list[str]:
    return [f"b{batch}-d{j}" for j in range(size)]


def text(batch: int, j: int) -> str:
    words = [WORDS[(batch * 7 + j * 3 + n * n) % len(WORDS)] for n in range(12)]
    return f"Batch {batch} document {j}: {' '.join(words)} ref{batch:04d}x{j:04d}."


def main() -> None:
    db, batches, size, hang_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    snapshots = Path(sys.argv[5]) if len(sys.argv) > 5 else None
    index = gr.GuardedIndex(gr.HashingEmbedder(32), policy=gr.TrustPolicy(manifest_required=False),
                            ledger=gr.Ledger(db))
    for i in range(batches):
        def in_flight(report: gr.IngestReport, i: int = i) -> None:
            print(f"inflight {i}", flush=True)
            if i == hang_at:
                time.sleep(120)

        docs = [(doc_id, text(i, j)) for j, doc_id in enumerate(doc_ids(i, size))]
        report = index.add(docs, namespace=NS, on_commit=in_flight)
        print(f"ack {i} {report.batch_id}", flush=True)
        if snapshots is not None:
            index.save(snapshots / f"snap-{i}", signer=SIGNER)
            print(f"saved {i}", flush=True)


if __name__ == "__main__":
    main()
