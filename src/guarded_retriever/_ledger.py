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

``Ledger("postgresql://...")`` keeps the same tables in PostgreSQL instead (``_ledger_postgres``,
the ``postgres`` extra), so several processes can ingest into one ledger. Everything above holds
there too; this module keeps the logic, a dialect object keeps the few statements, the write
lock and the backup that differ.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

from ._exceptions import LedgerError, NamespaceFrozenError, RevokedContentError

__all__ = ["Decision", "Ledger", "LedgerConnection", "LedgerRecord"]

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


_DOC_COLUMNS = ("namespace, doc_id, manifest_id, content_hash, simhash, provenance, poison, reasons, decision,"
                " batch_id, created_at")
# What a logical copy of a ledger moves (PostgreSQL <-> the SQLite file of a saved index), in order.
# ``documents`` are copied in ingest order so the copy keeps it; ``audit_events`` keep their seq.
COPIED_TABLES: tuple[tuple[str, str, str], ...] = (
    ("manifests", "manifest_id, signer, source_type, source_url, signed, payload, created_at", "manifest_id"),
    ("documents", _DOC_COLUMNS, "rowid"),
    ("revocations", "kind, value, reason, created_at", "kind, value"),
    ("frozen", "namespace, reason, created_at", "namespace"),
    ("audit_events", "seq, created_at, kind, namespace, detail", "seq"),
)


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


class LedgerCursor(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class LedgerConnection(Protocol):
    """What :meth:`Ledger.transaction` yields: an ``sqlite3`` or a ``psycopg`` connection."""

    def execute(self, sql: str, params: Any = ..., /) -> LedgerCursor: ...


class _Dialect(Protocol):
    """What differs between backends; :class:`_SQLite` and ``_ledger_postgres.PostgresDialect``."""

    @property
    def conn(self) -> LedgerConnection: ...

    errors: tuple[type[Exception], ...]
    insert_manifest: str
    write_documents: str
    replace_revocation: str
    replace_frozen: str

    def sql(self, query: str) -> str: ...
    def reconnect(self) -> None: ...
    def begin(self) -> None: ...
    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def version(self) -> int | None: ...
    def changed(self) -> None: ...
    def backup_to(self, target: sqlite3.Connection) -> None: ...
    def restore_from(self, source: sqlite3.Connection) -> None: ...
    def close(self) -> None: ...


class _SQLite:
    """The default dialect: SQLite's statements, ``BEGIN IMMEDIATE`` as the write lock, its backup API."""

    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    insert_manifest = "INSERT OR IGNORE INTO manifests VALUES (?, ?, ?, ?, ?, ?, ?)"
    write_documents = "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    replace_revocation = "INSERT OR REPLACE INTO revocations VALUES (?, ?, ?, ?)"
    replace_frozen = "INSERT OR REPLACE INTO frozen VALUES (?, ?, ?)"

    def __init__(self, path: str) -> None:
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) so a batch is one unit.
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if path != ":memory:":
            self.conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across process crashes in WAL mode; FULL only adds power-loss
            # durability of the very last commit, at a sync per batch.
            self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)

    @staticmethod
    def sql(query: str) -> str:
        return query

    def reconnect(self) -> None:
        """Replace a lost connection (outside transactions); a file connection is never lost."""

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")  # the database's one write lock, held to COMMIT

    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(query, rows)

    def version(self) -> int | None:
        """A counter other processes bump when they revoke; ``None``: only this object writes."""
        return None

    def changed(self) -> None:
        """Bump :meth:`version` (inside a transaction that changed revocations)."""

    def backup_to(self, target: sqlite3.Connection) -> None:
        self.conn.backup(target)

    def restore_from(self, source: sqlite3.Connection) -> None:
        source.backup(self.conn)

    def close(self) -> None:
        self.conn.close()


def _is_postgres_url(path: str | Path) -> bool:
    return isinstance(path, str) and path.startswith(("postgresql://", "postgres://"))


class Ledger:
    """The guard's memory. ``Ledger()`` is in memory; ``Ledger("guard.db")`` persists (WAL).

    ``Ledger("postgresql://user@host/db")`` keeps it in PostgreSQL (needs the ``postgres`` extra):
    the same tables and guarantees, shared by every process that opens the same URL. Its
    transactions hold one advisory lock, as SQLite's hold its write lock, so batches from many
    processes land one after another, each whole.
    """

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self.backend: Literal["sqlite", "postgresql"] = "postgresql" if _is_postgres_url(path) else "sqlite"
        self._d: _Dialect
        if self.backend == "postgresql":
            from ._ledger_postgres import PostgresDialect, redact

            self.path = redact(self.path)
            self._d = PostgresDialect(str(path))  # raises LedgerError / MissingExtraError itself
        else:
            try:
                self._d = _SQLite(self.path)
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot open ledger at {self.path!r}: {exc}") from exc
        self._lock = threading.RLock()
        self._in_transaction = False
        # revoked_hashes() is read on every screened query; it only changes when a transaction
        # commits (or a backup is restored), which is when this is dropped. With a shared
        # (PostgreSQL) ledger it is also stale once another process bumped the version it was
        # read at.
        self._revoked_hashes: frozenset[str] | None = None
        self._revoked_version: int | None = None

    @property
    def _conn(self) -> LedgerConnection:
        return self._d.conn

    def _execute(self, conn: LedgerConnection, query: str, params: Sequence[Any] = ()) -> LedgerCursor:
        return conn.execute(self._d.sql(query), params)

    def _rows(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            if not self._in_transaction:  # never swap connections under an open transaction
                self._d.reconnect()
            return self._execute(self._conn, query, params).fetchall()

    def backup_to(self, target: sqlite3.Connection) -> None:
        """Copy the whole ledger into ``target`` (a consistent snapshot, even while in use)."""
        with self._lock:
            self._d.backup_to(target)

    def restore_from(self, source: sqlite3.Connection) -> None:
        """Replace this ledger's contents with ``source``'s (used when loading a saved index)."""
        with self._lock:
            self._d.restore_from(source)
            self._revoked_hashes = None

    def close(self) -> None:
        with self._lock:
            self._d.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[LedgerConnection]:
        """One ``BEGIN IMMEDIATE`` … ``COMMIT`` (on PostgreSQL: ``BEGIN`` and the ledger's advisory
        lock); any exception rolls everything back."""
        with self._lock:
            try:
                self._d.reconnect()
                self._d.begin()
            except self._d.errors as exc:
                raise LedgerError(f"cannot start a ledger transaction: {exc}") from exc
            self._in_transaction = True
            try:
                try:
                    yield self._conn
                except BaseException:
                    self._rollback()
                    raise
                try:
                    self._conn.execute("COMMIT")
                except self._d.errors as exc:
                    self._rollback()
                    raise LedgerError(f"ledger commit failed: {exc}") from exc
                finally:
                    self._revoked_hashes = None
            finally:
                self._in_transaction = False

    def _rollback(self) -> None:
        # A lost connection has rolled back already; the caller's error is the one to see.
        with suppress(*self._d.errors):
            self._conn.execute("ROLLBACK")

    def record_batch(
        self,
        records: Sequence[LedgerRecord],
        *,
        manifest: ManifestRecord | None,
        batch_id: str,
        namespace: str,
        conn: LedgerConnection | None = None,
    ) -> None:
        """Write a batch's manifest, documents and audit event (inside ``conn``'s transaction if given).

        Freezes and revocations are checked again here, under the write lock: one that committed
        (in any process) after the batch was prepared still stops it.
        """
        if conn is None:
            with self.transaction() as tx:
                self.record_batch(records, manifest=manifest, batch_id=batch_id, namespace=namespace, conn=tx)
            return
        now = time.time()
        try:
            self._refuse_frozen_or_revoked(namespace, records, manifest)
            if manifest is not None:
                self._execute(conn, self._d.insert_manifest,
                              (manifest.manifest_id, manifest.signer, manifest.source_type,
                               manifest.source_url, int(manifest.signed), manifest.payload, now))
            self._d.executemany(
                self._d.write_documents,
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
        except self._d.errors as exc:
            raise LedgerError(f"cannot record batch {batch_id}: {exc}") from exc

    def _refuse_frozen_or_revoked(self, namespace: str, records: Sequence[LedgerRecord],
                                  manifest: ManifestRecord | None) -> None:
        # Called inside the batch's transaction: every read below goes to its connection.
        if self.is_frozen(namespace):
            raise NamespaceFrozenError(f"namespace {namespace!r} is frozen")
        if manifest is not None and manifest.manifest_id in self.revoked("manifest"):
            raise RevokedContentError(f"manifest {manifest.manifest_id} has been revoked")
        # Uncached, on this transaction's connection, after the write lock: what any other
        # connection or process revoked up to now (a SQLite cache would not know of it).
        revoked = self._read_revoked_hashes()
        for r in records:
            if r.content_hash in revoked:
                raise RevokedContentError(f"content hash {r.content_hash} has been revoked", doc_id=r.doc_id)

    # -- audit ----------------------------------------------------------------------------------

    def _audit(self, conn: LedgerConnection, kind: str, namespace: str | None, detail: dict[str, Any],
               now: float | None = None) -> None:
        self._execute(
            conn,
            "INSERT INTO audit_events (created_at, kind, namespace, detail) VALUES (?, ?, ?, ?)",
            (time.time() if now is None else now, kind, namespace, orjson.dumps(detail).decode()),
        )

    def audit_in(self, conn: LedgerConnection, kind: str, namespace: str | None = None, **detail: Any) -> None:
        """Append one audit event inside the caller's transaction (it commits or rolls back with it)."""
        self._audit(conn, kind, namespace, detail)

    def audit(self, kind: str, namespace: str | None = None, **detail: Any) -> None:
        """Append one audit event in its own transaction."""
        with self.transaction() as tx:
            self._audit(tx, kind, namespace, detail)

    def audit_events(self, kind: str | None = None) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT seq, created_at, kind, namespace, detail FROM audit_events"
            + (" WHERE kind = ?" if kind else "") + " ORDER BY seq",
            (kind,) if kind else (),
        )
        return [
            {**orjson.loads(d), "seq": s, "created_at": t, "kind": k, "namespace": ns}
            for s, t, k, ns, d in rows
        ]

    # -- documents ------------------------------------------------------------------------------

    def get(self, namespace: str, doc_id: str) -> LedgerRecord | None:
        rows = self._rows(f"SELECT {_DOC_COLUMNS} FROM documents WHERE namespace = ? AND doc_id = ?",
                          (namespace, doc_id))
        return self._record(rows[0]) if rows else None

    def documents(self, namespace: str | None = None) -> list[LedgerRecord]:
        rows = self._rows(
            f"SELECT {_DOC_COLUMNS} FROM documents" + (" WHERE namespace = ?" if namespace else "")
            + " ORDER BY rowid",
            (namespace,) if namespace else (),
        )
        return [self._record(r) for r in rows]

    def detections(self) -> list[tuple[str, tuple[str, ...], str | None, str]]:
        """``(namespace, reasons, source_url, batch_id)`` of every document quarantined at ingest."""
        rows = self._rows(
            "SELECT d.namespace, d.reasons, m.source_url, d.batch_id FROM documents d"
            " LEFT JOIN manifests m ON m.manifest_id = d.manifest_id WHERE d.decision = 'quarantine'"
        )
        return [(ns, tuple(orjson.loads(r)), url, b) for ns, r, url, b in rows]

    def simhashes(self, namespace: str) -> list[tuple[str, int]]:
        """``(doc_id, simhash)`` of a namespace's documents."""
        rows = self._rows("SELECT doc_id, simhash FROM documents WHERE namespace = ?", (namespace,))
        return [(d, _from_sql_u64(h)) for d, h in rows]

    def count(self, decision: Decision | None = None) -> int:
        if decision is None:
            return int(self._rows("SELECT count(*) FROM documents")[0][0])
        return int(self._rows("SELECT count(*) FROM documents WHERE decision = ?", (decision,))[0][0])

    @staticmethod
    def _record(row: tuple[Any, ...]) -> LedgerRecord:
        ns, doc_id, mid, chash, simhash, prov, poison, reasons, decision, batch_id, created = row
        return LedgerRecord(ns, doc_id, mid, chash, _from_sql_u64(simhash), prov, poison,
                            tuple(orjson.loads(reasons)), decision, batch_id, created)

    def manifest(self, manifest_id: str) -> ManifestRecord | None:
        rows = self._rows(
            "SELECT manifest_id, signer, source_type, source_url, signed, payload"
            " FROM manifests WHERE manifest_id = ?", (manifest_id,)
        )
        if not rows:
            return None
        row = rows[0]
        return ManifestRecord(row[0], row[1], row[2], row[3], bool(row[4]), bytes(row[5]))

    # -- revocation and freezing ------------------------------------------------------------------

    def revoke(self, kind: RevocationKind, value: str, reason: str, *,
               purge: Sequence[tuple[str, str]] = (), conn: LedgerConnection | None = None) -> None:
        """Refuse ``value`` from now on, and drop the ``(namespace, doc_id)`` records it covered.

        Records the value covers that ``purge`` does not list (written by another process into a
        shared ledger) are dropped too, and listed in the audit event after ``purge``.
        """
        if conn is None:
            with self.transaction() as tx:
                self.revoke(kind, value, reason, purge=purge, conn=tx)
            return
        self._execute(conn, self._d.replace_revocation, (kind, value, reason, time.time()))
        column = "content_hash" if kind == "content_hash" else "manifest_id"
        listed = set(purge)
        others = [(ns, d) for ns, d in self._execute(
            conn, f"SELECT namespace, doc_id FROM documents WHERE {column} = ? ORDER BY rowid", (value,)
        ).fetchall() if (ns, d) not in listed]
        self.delete_documents([*purge, *others], conn=conn)
        self._d.changed()
        self._audit(conn, "revoked", None, {"kind": kind, "value": value, "reason": reason,
                                            "documents": [list(p) for p in [*purge, *others]]})

    def delete_documents(self, keys: Sequence[tuple[str, str]], *, conn: LedgerConnection | None = None) -> None:
        """Drop the records of ``(namespace, doc_id)`` pairs."""
        if conn is None:
            with self.transaction() as tx:
                self.delete_documents(keys, conn=tx)
            return
        self._d.executemany("DELETE FROM documents WHERE namespace = ? AND doc_id = ?", keys)

    def revocations(self) -> list[dict[str, Any]]:
        rows = self._rows("SELECT kind, value, reason, created_at FROM revocations ORDER BY created_at")
        return [{"kind": k, "value": v, "reason": r, "at": at} for k, v, r, at in rows]

    def revoked_hashes(self) -> frozenset[str]:
        """Every content hash that must stay out: revoked ones, and those listed by revoked manifests."""
        with self._lock:
            if not self._in_transaction:  # a search-only process must recover from a dropped session
                self._d.reconnect()
            version = self._d.version()  # read first: a revocation after it makes the next call reload
            if self._revoked_hashes is not None and version == self._revoked_version:
                return self._revoked_hashes
            self._revoked_hashes = self._read_revoked_hashes()
            self._revoked_version = version
            return self._revoked_hashes

    def _read_revoked_hashes(self) -> frozenset[str]:
        """:meth:`revoked_hashes` read from the database, never from the cache."""
        hashes = self.revoked("content_hash")
        payloads = self._rows(
            "SELECT m.payload FROM manifests m JOIN revocations r"
            " ON r.kind = 'manifest' AND r.value = m.manifest_id")
        for (payload,) in payloads:
            body = orjson.loads(payload)
            body = body.get("manifest", body)  # a signed manifest wraps its body
            hashes.update(body.get("content_hashes", ()))
        return frozenset(hashes)

    def frozen(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT namespace FROM frozen ORDER BY namespace")]

    def revoked(self, kind: RevocationKind) -> set[str]:
        return {r[0] for r in self._rows("SELECT value FROM revocations WHERE kind = ?", (kind,))}

    def freeze(self, namespace: str, reason: str) -> None:
        with self.transaction() as tx:
            self._execute(tx, self._d.replace_frozen, (namespace, reason, time.time()))
            self._audit(tx, "namespace_frozen", namespace, {"reason": reason})

    def unfreeze(self, namespace: str) -> None:
        with self.transaction() as tx:
            self._execute(tx, "DELETE FROM frozen WHERE namespace = ?", (namespace,))
            self._audit(tx, "namespace_unfrozen", namespace, {})

    def is_frozen(self, namespace: str) -> bool:
        return bool(self._rows("SELECT 1 FROM frozen WHERE namespace = ?", (namespace,)))
