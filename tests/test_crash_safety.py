"""Crash safety: an ingest process killed with SIGKILL mid-batch loses nothing it acknowledged and
leaves no half batch.

What is durable: the SQLite ledger (``Ledger(path)``, WAL) is written in one transaction per batch,
so it is the ledger that must survive a crash between saves; the BM25 and FAISS shards live in
memory and become durable only through ``GuardedIndex.save``, which writes a new directory and
renames it into place. So the checks are: after a kill, the reopened ledger holds every document of
every acknowledged batch, each batch is there whole or not at all, and batches land in order (no
batch after a missing one); with a save after every batch, every snapshot directory that exists
verifies, loads, and holds exactly the batches acknowledged before it was written.

The worker is ``tests/crash_ingest_worker.py``; it prints ``ack <i> <batch_id>`` after each commit.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import guarded_retriever as gr
from tests.crash_ingest_worker import NS, SIGNER, doc_ids, text

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

WORKER = Path(__file__).with_name("crash_ingest_worker.py")
KEY = gr.Namespace.of(**NS).key


class Worker:
    """The ingest subprocess, with its stdout read line by line on a thread."""

    def __init__(self, *args: object) -> None:
        self.proc = subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.acked: dict[int, str] = {}
        self.saved: list[int] = []

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                assert self.proc.stderr is not None
                raise AssertionError(f"the worker exited before {prefix!r}: {self.proc.stderr.read()}")
            self._note(line)
            if line.startswith(prefix):
                return line

    def _note(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "ack":
            i, batch_id = rest.split()
            self.acked[int(i)] = batch_id
        elif kind == "saved":
            self.saved.append(int(rest))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL
        while True:  # acks printed before the kill count too
            line = self.lines.get(timeout=30)
            if line is None:
                break
            self._note(line)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()


def check_ledger(db: Path, acked: dict[int, str], size: int) -> int:
    """Every acknowledged batch is whole, no batch is partial, batches form a prefix; returns how many."""
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    raw.close()
    with gr.Ledger(db) as ledger:
        records = ledger.documents(KEY)
        events = ledger.audit_events("batch_ingested")
    by_batch = Counter(r.batch_id for r in records)
    assert all(n == size for n in by_batch.values()), f"a half batch survived: {by_batch}"
    present = {r.doc_id for r in records}
    landed = sorted({int(r.doc_id.split("-")[0][1:]) for r in records})
    assert landed == list(range(len(landed))), f"batches landed out of order: {landed}"
    for i, batch_id in acked.items():
        assert by_batch[batch_id] == size, f"acknowledged batch {i} is missing"
        assert set(doc_ids(i, size)) <= present
    assert max(acked, default=-1) <= len(landed) - 1 <= max(acked, default=-1) + 1  # at most the in-flight one
    assert {e["batch_id"] for e in events} == set(by_batch)  # the audit row came with its batch
    return len(landed)


def test_killed_inside_the_batch_transaction(tmp_path: Path) -> None:
    """Killed while batch 3 is in flight: its rows are written and the shards updated, uncommitted."""
    db, size = tmp_path / "guard.db", 40
    worker = Worker(db, 10, size, 3)
    worker.wait_for("inflight 3")
    worker.kill()
    assert sorted(worker.acked) == [0, 1, 2]
    assert check_ledger(db, worker.acked, size) == 3
    # The reopened ledger takes new batches (no stale lock or torn WAL left behind).
    index = gr.GuardedIndex(gr.HashingEmbedder(32), policy=gr.TrustPolicy(manifest_required=False),
                            ledger=gr.Ledger(db))
    index.add([(i, text(3, j)) for j, i in enumerate(doc_ids(3, size))], namespace=NS)
    assert check_ledger(db, {**worker.acked}, size) == 4
    index.ledger.close()


@pytest.mark.parametrize("seed", range(5))
def test_killed_at_a_random_moment(tmp_path: Path, seed: int) -> None:
    """Large batches, killed a random few milliseconds after a random ack: anywhere in a batch."""
    rng = random.Random(seed)
    db, size = tmp_path / "guard.db", 300
    worker = Worker(db, 200, size, -1)
    worker.wait_for(f"ack {rng.randint(1, 6)} ")
    time.sleep(rng.uniform(0, 0.06))
    worker.kill()
    assert worker.acked
    check_ledger(db, worker.acked, size)


@pytest.mark.parametrize("seed", range(2))
def test_killed_while_saving_snapshots(tmp_path: Path, seed: int) -> None:
    """A save after every batch, killed at a random moment (often inside a save): every snapshot
    directory that exists verifies and loads, and holds exactly the batches before it."""
    rng = random.Random(100 + seed)
    db, snaps, size = tmp_path / "guard.db", tmp_path / "snaps", 60
    snaps.mkdir()
    worker = Worker(db, 100, size, -1, snaps)
    worker.wait_for(f"saved {rng.randint(1, 3)}")
    time.sleep(rng.uniform(0, 0.05))
    worker.kill()
    check_ledger(db, worker.acked, size)
    finished = sorted(int(p.name.split("-")[1]) for p in snaps.iterdir() if p.name.startswith("snap-"))
    assert set(worker.saved) <= set(finished)
    assert finished == list(range(len(finished)))
    for i in (finished[0], finished[-1]):
        index = gr.GuardedIndex.load(snaps / f"snap-{i}", trusted_signers={SIGNER.public_key},
                                     embedder=gr.HashingEmbedder(32))
        expected = [d for b in range(i + 1) for d in doc_ids(b, size)]
        # Templated texts form tight families: some may be quarantined, none may be missing.
        assert sorted(index.ids(namespace=NS, include_quarantined=True)) == sorted(expected)
        assert {r.doc_id for r in index.ledger.documents(KEY)} == set(expected)
        last = index.get(expected[-3:], namespace=NS, include_quarantined=True)
        assert [r.text for r in last] == [text(i, j) for j in range(size - 3, size)]
        result = index.search(text(i, 1), namespace=NS, k=size)  # the echo may well be quarantined
        assert (f"b{i}-d1", text(i, 1)) in {(h.id, h.text) for h in [*result.kept, *result.quarantined]}
