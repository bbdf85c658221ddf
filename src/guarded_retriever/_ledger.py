"""The ledger: an embedded SQLite database (WAL) that remembers every decision the guard made.

Tables:

``manifests``      every manifest a batch arrived with (id, signer, source, the signed JSON)
``documents``      one row per (namespace, doc id): manifest, content hash, simhash, provenance,
                   poison score and reasons, the routing decision, the batch and the time
``revocations``    revoked content hashes and manifest ids
``frozen``         namespaces whose writes are blocked
``audit_events``   an append-only log: batches, rejections, revocations, freezes

A batch is written in one ``BEGIN IMMEDIATE`` transaction, so it lands whole or not at all, even
if the process is killed half-way (SQLite's journal rolls the torn transaction back on reopen).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from ._exceptions import LedgerError

__all__ = ["Decision", "Ledger", "LedgerRecord"]

Decision = Literal["main", "quarantine"]
RevocationKind = Literal["content_hash", "manifest"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS manifests (
    manifest_id TEXT PRIMARY KEY,
    signer      TEXT,
    source_type TEXT,
    source_url  TEXT,
    signed      INTEGER NOT NULL,
    payload     BLOB NOT NULL,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    namespace    TEXT NOT NULL,
    doc_id       TEXT NOT NULL,
    manifest_id  TEXT,
    content_hash TEXT NOT NULL,
    simhash      INTEGER NOT NULL,
    provenance   REAL NOT NULL,
    poison       REAL NOT NULL,
    reasons      TEXT NOT NULL,
    decision     TEXT NOT NULL CHECK (decision IN ('main', 'quarantine')),
    batch_id     TEXT NOT NULL,
    created_at   REAL NOT NULL,
    PRIMARY KEY (namespace, doc_id)
);
CREATE INDEX IF NOT EXISTS documents_by_hash ON documents (content_hash);
CREATE INDEX IF NOT EXISTS documents_by_manifest ON documents (manifest_id);
CREATE TABLE IF NOT EXISTS revocations (
    kind       TEXT NOT NULL CHECK (kind IN ('content_hash', 'manifest')),
    value      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE TABLE IF NOT EXISTS frozen (
    namespace  TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    kind       TEXT NOT NULL,
    namespace  TEXT,
    detail     TEXT NOT NULL
);
"""

_SIGN_BIT = 1 << 63


def _to_sql_u64(v: int) -> int:
    """SQLite integers are signed 64-bit; store the simhash's bit pattern as one."""
    return v - (1 << 64) if v >= _SIGN_BIT else v


def _from_sql_u64(v: int) -> int:
    return v + (1 << 64) if v < 0 else v


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One document's row in the ledger."""

    namespace: str
    doc_id: str
    manifest_id: str | None
    content_hash: str
    simhash: int
    provenance: float
    poison: float
    reasons: tuple[str, ...]
    decision: Decision
    batch_id: str = ""
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    manifest_id: str
    signer: str | None
    source_type: str | None
    source_url: str | None
    signed: bool
    payload: bytes


class Ledger:
    """The guard's memory. ``Ledger()`` is in memory; ``Ledger("guard.db")`` persists (WAL)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        try:
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) so a batch is one unit.
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
                # NORMAL is durable across process crashes in WAL mode; FULL only adds power-loss
                # durability of the very last commit, at a sync per batch.
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger at {self.path!r}: {exc}") from exc
        self._lock = threading.RLock()
        # revoked_hashes() is read on every screened query; it only changes when a transaction
        # commits (or a backup is restored), which is when this is dropped.
        self._revoked_hashes: frozenset[str] | None = None

    def backup_to(self, target: sqlite3.Connection) -> None:
        """Copy the whole ledger into ``target`` (a consistent snapshot, even while in use)."""
        with self._lock:
            self._conn.backup(target)

    def restore_from(self, source: sqlite3.Connection) -> None:
        """Replace this ledger's contents with ``source``'s (used when loading a saved index)."""
        with self._lock:
            source.backup(self._conn)
            self._revoked_hashes = None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` … ``COMMIT``; any exception rolls everything back."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot start a ledger transaction: {exc}") from exc
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise LedgerError(f"ledger commit failed: {exc}") from exc
            finally:
                self._revoked_hashes = None

    def record_batch(
        self,
        records: Sequence[LedgerRecord],
        *,
        manifest: ManifestRecord | None,
        batch_id: str,
        namespace: str,
        conn: sqlite3.Connection | None = None,
    ) -> None:
        """Write a batch's manifest, documents and audit event (inside ``conn``'s transaction if given)."""
        if conn is None:
            with self.transaction() as tx:
                self.record_batch(records, manifest=manifest, batch_id=batch_id, namespace=namespace, conn=tx)
            return
        now = time.time()
        try:
            if manifest is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO manifests VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (manifest.manifest_id, manifest.signer, manifest.source_type,
                     manifest.source_url, int(manifest.signed), manifest.payload, now),
                )
            conn.executemany(
                "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.namespace, r.doc_id, r.manifest_id, r.content_hash, _to_sql_u64(r.simhash),
                     r.provenance, r.poison, orjson.dumps(r.reasons).decode(), r.decision, batch_id, now)
                    for r in records
                ],
            )
            quarantined = sum(r.decision == "quarantine" for r in records)
            self._audit(conn, "batch_ingested", namespace, {
                "batch_id": batch_id,
                "manifest_id": manifest.manifest_id if manifest else None,
                "documents": len(records),
                "quarantined": quarantined,
            }, now)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot record batch {batch_id}: {exc}") from exc

    # -- audit ----------------------------------------------------------------------------------

    @staticmethod
    def _audit(conn: sqlite3.Connection, kind: str, namespace: str | None, detail: dict[str, Any],
               now: float | None = None) -> None:
        conn.execute(
            "INSERT INTO audit_events (created_at, kind, namespace, detail) VALUES (?, ?, ?, ?)",
            (time.time() if now is None else now, kind, namespace, orjson.dumps(detail).decode()),
        )

    def audit(self, kind: str, namespace: str | None = None, **detail: Any) -> None:
        """Append one audit event in its own transaction."""
        with self.transaction() as tx:
            self._audit(tx, kind, namespace, detail)

    def audit_events(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, created_at, kind, namespace, detail FROM audit_events"
                + (" WHERE kind = ?" if kind else "") + " ORDER BY seq",
                (kind,) if kind else (),
            ).fetchall()
        return [
            {**orjson.loads(d), "seq": s, "created_at": t, "kind": k, "namespace": ns}
            for s, t, k, ns, d in rows
        ]

    # -- documents ------------------------------------------------------------------------------

    def get(self, namespace: str, doc_id: str) -> LedgerRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM documents WHERE namespace = ? AND doc_id = ?", (namespace, doc_id)
            ).fetchone()
        return None if row is None else self._record(row)

    def documents(self, namespace: str | None = None) -> list[LedgerRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM documents" + (" WHERE namespace = ?" if namespace else "")
                + " ORDER BY rowid",
                (namespace,) if namespace else (),
            ).fetchall()
        return [self._record(r) for r in rows]

    def detections(self) -> list[tuple[str, tuple[str, ...], str | None, str]]:
        """``(namespace, reasons, source_url, batch_id)`` of every document quarantined at ingest."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT d.namespace, d.reasons, m.source_url, d.batch_id FROM documents d"
                " LEFT JOIN manifests m ON m.manifest_id = d.manifest_id WHERE d.decision = 'quarantine'"
            ).fetchall()
        return [(ns, tuple(orjson.loads(r)), url, b) for ns, r, url, b in rows]

    def simhashes(self, namespace: str) -> list[tuple[str, int]]:
        """``(doc_id, simhash)`` of a namespace's documents."""
        with self._lock:
            rows = self._conn.execute("SELECT doc_id, simhash FROM documents WHERE namespace = ?",
                                      (namespace,)).fetchall()
        return [(d, _from_sql_u64(h)) for d, h in rows]

    def count(self, decision: Decision | None = None) -> int:
        with self._lock:
            if decision is None:
                return int(self._conn.execute("SELECT count(*) FROM documents").fetchone()[0])
            return int(self._conn.execute(
                "SELECT count(*) FROM documents WHERE decision = ?", (decision,)
            ).fetchone()[0])

    @staticmethod
    def _record(row: tuple[Any, ...]) -> LedgerRecord:
        ns, doc_id, mid, chash, simhash, prov, poison, reasons, decision, batch_id, created = row
        return LedgerRecord(ns, doc_id, mid, chash, _from_sql_u64(simhash), prov, poison,
                            tuple(orjson.loads(reasons)), decision, batch_id, created)

    def manifest(self, manifest_id: str) -> ManifestRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT manifest_id, signer, source_type, source_url, signed, payload"
                " FROM manifests WHERE manifest_id = ?", (manifest_id,)
            ).fetchone()
        return None if row is None else ManifestRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5])

    # -- revocation and freezing ------------------------------------------------------------------

    def revoke(self, kind: RevocationKind, value: str, reason: str, *,
               purge: Sequence[tuple[str, str]] = (), conn: sqlite3.Connection | None = None) -> None:
        """Refuse ``value`` from now on, and drop the ``(namespace, doc_id)`` records it covered."""
        if conn is None:
            with self.transaction() as tx:
                self.revoke(kind, value, reason, purge=purge, conn=tx)
            return
        conn.execute("INSERT OR REPLACE INTO revocations VALUES (?, ?, ?, ?)", (kind, value, reason, time.time()))
        self.delete_documents(purge, conn=conn)
        self._audit(conn, "revoked", None, {"kind": kind, "value": value, "reason": reason,
                                            "documents": [list(p) for p in purge]})

    def delete_documents(self, keys: Sequence[tuple[str, str]], *, conn: sqlite3.Connection | None = None) -> None:
        """Drop the records of ``(namespace, doc_id)`` pairs."""
        if conn is None:
            with self.transaction() as tx:
                self.delete_documents(keys, conn=tx)
            return
        conn.executemany("DELETE FROM documents WHERE namespace = ? AND doc_id = ?", keys)

    def revocations(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT kind, value, reason, created_at FROM revocations ORDER BY created_at").fetchall()
        return [{"kind": k, "value": v, "reason": r, "at": at} for k, v, r, at in rows]

    def revoked_hashes(self) -> frozenset[str]:
        """Every content hash that must stay out: revoked ones, and those listed by revoked manifests."""
        with self._lock:
            if self._revoked_hashes is not None:
                return self._revoked_hashes
            hashes = self.revoked("content_hash")
            payloads = self._conn.execute(
                "SELECT m.payload FROM manifests m JOIN revocations r"
                " ON r.kind = 'manifest' AND r.value = m.manifest_id").fetchall()
            for (payload,) in payloads:
                body = orjson.loads(payload)
                body = body.get("manifest", body)  # a signed manifest wraps its body
                hashes.update(body.get("content_hashes", ()))
            self._revoked_hashes = frozenset(hashes)
            return self._revoked_hashes

    def frozen(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT namespace FROM frozen ORDER BY namespace")]

    def revoked(self, kind: RevocationKind) -> set[str]:
        with self._lock:
            rows = self._conn.execute("SELECT value FROM revocations WHERE kind = ?", (kind,)).fetchall()
        return {r[0] for r in rows}

    def freeze(self, namespace: str, reason: str) -> None:
        with self.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO frozen VALUES (?, ?, ?)", (namespace, reason, time.time()))
            self._audit(tx, "namespace_frozen", namespace, {"reason": reason})

    def unfreeze(self, namespace: str) -> None:
        with self.transaction() as tx:
            tx.execute("DELETE FROM frozen WHERE namespace = ?", (namespace,))
            self._audit(tx, "namespace_unfrozen", namespace, {})

    def is_frozen(self, namespace: str) -> bool:
        with self._lock:
            return self._conn.execute(
                "SELECT 1 FROM frozen WHERE namespace = ?", (namespace,)
            ).fetchone() is not None
