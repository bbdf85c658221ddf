"""The ledger: an embedded SQLite database (WAL) that remembers every decision the guard made.

Tables:

``manifests``      every manifest a batch arrived with (id, signer, source, the signed JSON)
``documents``      one row per (namespace, doc id): manifest, content hash, simhash, provenance,
                   poison score and reasons, the routing decision, the batch and the time
``revocations``    revoked content hashes and manifest ids, index-wide (an operator's call)
``scoped_revocations``
                   revocations inside one namespace (a tenant-bound store's call), and the content
                   hashes a manifest revocation withholds where they were ingested under it
``frozen``         namespaces whose writes are blocked
``audit_events``   an append-only log: batches, rejections, revocations, freezes
``manifest_namespaces``
                   the one namespace each manifest was ingested into: a copy replayed into any
                   other is refused (:class:`ManifestReplayError`), as is one signed for another

A batch is written in one ``BEGIN IMMEDIATE`` transaction, so it lands whole or not at all, even
if the process is killed half-way (SQLite's journal rolls the torn transaction back on reopen).

Several processes may open one SQLite file. Each revocation (and restore) bumps a counter in
``ledger_state``, which ``revoked_hashes()`` reads on every call, so one process's revocation is
withheld by the others' next search; and a ledger file deleted or replaced under a running
process (another inode at its path) fails every later call with :class:`LedgerError` instead of
writing to, and reading revocations from, a file nobody else sees.

Loading a saved index copies the saved ledger's rows into this ledger's own schema: triggers,
views or altered tables in the saved file never come along.

``Ledger("postgresql://...")`` keeps the same tables in PostgreSQL instead (``_ledger_postgres``,
the ``postgres`` extra), so several processes can ingest into one ledger. Everything above holds
there too; this module keeps the logic, a dialect object keeps the few statements, the write
lock and the backup that differ.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

from ._exceptions import (
    ConfigError,
    IntegrityError,
    LedgerError,
    ManifestReplayError,
    NamespaceFrozenError,
    RevokedContentError,
)
from ._namespace import audience

__all__ = ["Decision", "Ledger", "LedgerConnection", "LedgerRecord", "check_reason"]

MAX_REASON_CHARS = 4096


def check_reason(reason: object) -> str:
    """A revocation's or a freeze's reason, as the ledger stores it.

    Raises:
        ConfigError: not a ``str``, longer than :data:`MAX_REASON_CHARS`, or a lone surrogate.
    """
    if not isinstance(reason, str):
        raise ConfigError(f"reason must be a str, got {type(reason).__name__}")
    if len(reason) > MAX_REASON_CHARS:
        raise ConfigError(f"reason is longer than {MAX_REASON_CHARS} characters")
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError("reason contains a lone surrogate") from None
    return reason

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
CREATE TABLE IF NOT EXISTS scoped_revocations (
    namespace  TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('content_hash', 'manifest')),
    value      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    cause      TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (namespace, kind, value)
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
CREATE TABLE IF NOT EXISTS manifest_namespaces (
    manifest_id TEXT PRIMARY KEY,
    namespace   TEXT NOT NULL,
    created_at  REAL NOT NULL
);
"""
# SQLite's revocation counter (PostgreSQL's dialect keeps its own, in its own syntax).
_SQLITE_STATE = """
CREATE TABLE IF NOT EXISTS ledger_state (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO ledger_state VALUES (1, 0);
"""
SQLITE_SCHEMA = _SCHEMA + _SQLITE_STATE
"""A ledger file's whole schema (also what a PostgreSQL ledger's backup is written in)."""

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
    ("scoped_revocations", "namespace, kind, value, reason, cause, created_at", "namespace, kind, value"),
    ("frozen", "namespace, reason, created_at", "namespace"),
    ("audit_events", "seq, created_at, kind, namespace, detail", "seq"),
    ("manifest_namespaces", "manifest_id, namespace, created_at", "manifest_id"),
)
# Tables a saved ledger written by an older version may lack (restored empty).
_ADDED_LATER = frozenset({"manifest_namespaces"})


def insert_sql(table: str, columns: str) -> str:
    return f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(columns.split(',')))})"


def copied_tables(source: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """The :data:`COPIED_TABLES` a saved ledger holds, each checked to be a plain table.

    Only rows are copied out of a saved ledger, into the loading ledger's own schema: a view in
    place of a table (rows made up on every read) is refused, and triggers are never copied.

    Raises:
        IntegrityError: a table is missing, or is a view.
    """
    kinds = dict(source.execute("SELECT name, type FROM sqlite_master").fetchall())
    out = []
    for entry in COPIED_TABLES:
        kind = kinds.get(entry[0])
        if kind is None and entry[0] in _ADDED_LATER:
            continue
        if kind != "table":
            raise IntegrityError(f"the saved ledger's {entry[0]!r} is {'missing' if kind is None else 'a ' + kind}"
                                 ", not a table")
        out.append(entry)
    return out


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

    @property
    def audience(self) -> str | None:
        """The namespace the (verified) manifest was signed for, from its stored JSON; ``None``
        when it names none."""
        try:
            stored = orjson.loads(self.payload)
        except orjson.JSONDecodeError:
            return None
        body = stored.get("manifest", stored) if isinstance(stored, dict) and "signature" in stored else stored
        named = body.get("namespace") if isinstance(body, dict) else None
        return named if isinstance(named, str) else None


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
    replace_scoped_revocation: str
    replace_frozen: str
    bind_manifest: str

    def sql(self, query: str) -> str: ...
    def reconnect(self) -> None: ...
    def begin(self) -> None: ...
    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def version(self) -> int | None: ...
    def changed(self) -> None: ...
    def backup_to(self, target: sqlite3.Connection) -> None: ...
    def restore_from(self, source: sqlite3.Connection, tables: Sequence[tuple[str, str, str]]) -> None: ...
    def close(self) -> None: ...


class _SQLite:
    """The default dialect: SQLite's statements, ``BEGIN IMMEDIATE`` as the write lock, its backup API."""

    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    insert_manifest = "INSERT OR IGNORE INTO manifests VALUES (?, ?, ?, ?, ?, ?, ?)"
    write_documents = "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    replace_revocation = "INSERT OR REPLACE INTO revocations VALUES (?, ?, ?, ?)"
    replace_scoped_revocation = "INSERT OR REPLACE INTO scoped_revocations VALUES (?, ?, ?, ?, ?, ?)"
    replace_frozen = "INSERT OR REPLACE INTO frozen VALUES (?, ?, ?)"
    bind_manifest = "INSERT OR IGNORE INTO manifest_namespaces VALUES (?, ?, ?)"

    def __init__(self, path: str) -> None:
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) so a batch is one unit.
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._file: tuple[str, int, int] | None = None
        if path not in (":memory:", ""):
            self.conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across process crashes in WAL mode; FULL only adds power-loss
            # durability of the very last commit, at a sync per batch.
            self.conn.execute("PRAGMA synchronous=NORMAL")
            # The file this connection holds open; its path must keep naming it (see reconnect).
            absolute = os.path.abspath(path)
            st = os.stat(absolute)
            self._file = (absolute, st.st_dev, st.st_ino)
        self.conn.executescript(SQLITE_SCHEMA)

    @staticmethod
    def sql(query: str) -> str:
        return query

    def reconnect(self) -> None:
        """A file connection is never lost, but its file can be: deleted or replaced by another
        process, the connection goes on with an inode nobody else opens, so revocations and
        batches would no longer be shared. Refuse to go on (one ``stat`` per call)."""
        if self._file is None:
            return
        path, dev, ino = self._file
        try:
            st = os.stat(path)
        except OSError:
            raise LedgerError(f"the ledger file {path!r} was deleted while open: reopen the ledger "
                              "(or restore the file) before writing or searching again") from None
        if (st.st_dev, st.st_ino) != (dev, ino):
            raise LedgerError(f"the ledger file {path!r} was replaced while open (another file is at its "
                              "path now): reopen the ledger before writing or searching again")

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")  # the database's one write lock, held to COMMIT

    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(query, rows)

    def version(self) -> int | None:
        """A counter every process bumps when it revokes; ``None``: in memory, only this object writes."""
        if self._file is None:
            return None
        row = self.conn.execute("SELECT version FROM ledger_state WHERE id = 1").fetchone()
        return None if row is None else int(row[0])

    def changed(self) -> None:
        """Bump :meth:`version` (inside a transaction that changed revocations)."""
        self.conn.execute("UPDATE ledger_state SET version = version + 1 WHERE id = 1")

    def backup_to(self, target: sqlite3.Connection) -> None:
        self.conn.backup(target)

    def restore_from(self, source: sqlite3.Connection, tables: Sequence[tuple[str, str, str]]) -> None:
        """Replace this ledger's rows with ``source``'s, in this ledger's own schema (one transaction)."""
        self.begin()
        try:
            for table, _, _ in COPIED_TABLES:
                self.conn.execute(f"DELETE FROM {table}")
            for table, columns, order in tables:
                rows = source.execute(f"SELECT {columns} FROM {table} ORDER BY {order}")
                self.conn.executemany(insert_sql(table, columns), rows)
            self.changed()
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

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
        self._revoked_hashes: tuple[frozenset[str], dict[str, frozenset[str]]] | None = None
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
        """Replace this ledger's contents with ``source``'s rows (used when loading a saved index).

        Raises:
            IntegrityError: ``source`` lacks a table, or holds a view in a table's place.
        """
        with self._lock:
            tables = copied_tables(source)
            self._d.reconnect()
            self._d.restore_from(source, tables)
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
                self._refuse_replay(conn, namespace, manifest, now)
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
        if manifest is not None and self.manifest_revoked(manifest.manifest_id, namespace):
            raise RevokedContentError(f"manifest {manifest.manifest_id} has been revoked")
        # Uncached, on this transaction's connection, after the write lock: what any other
        # connection or process revoked up to now (a SQLite cache would not know of it).
        everywhere, scoped = self._read_revoked_hashes()
        revoked = everywhere | scoped.get(namespace, frozenset())
        for r in records:
            if r.content_hash in revoked:
                raise RevokedContentError(f"content hash {r.content_hash} has been revoked", doc_id=r.doc_id)

    def _refuse_replay(self, conn: LedgerConnection, namespace: str, manifest: ManifestRecord, now: float) -> None:
        """A manifest vouches for one namespace: the one it names, else the first it was ingested
        into. Checked under the write lock, so two processes cannot both bind one manifest."""
        named = manifest.audience
        if named is not None and named != audience(namespace):
            raise ManifestReplayError(f"manifest {manifest.manifest_id} is signed for another namespace than "
                                      f"{namespace!r}: sign a manifest for this namespace")
        # Ledgers written before manifest_namespaces existed know the binding from documents.
        bound = self._execute(
            conn, "SELECT namespace FROM manifest_namespaces WHERE manifest_id = ?"
            " UNION SELECT namespace FROM documents WHERE manifest_id = ?",
            (manifest.manifest_id, manifest.manifest_id)).fetchall()
        if any(ns != namespace for (ns,) in bound):
            # Which namespace is not said: the caller may not be allowed to know it exists.
            raise ManifestReplayError(f"manifest {manifest.manifest_id} was already ingested into another "
                                      "namespace; a manifest vouches for one namespace: sign one per namespace")
        self._execute(conn, self._d.bind_manifest, (manifest.manifest_id, namespace, now))

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
               purge: Sequence[tuple[str, str]] = (), conn: LedgerConnection | None = None,
               namespace: str | None = None) -> list[tuple[str, str]]:
        """Refuse ``value`` from now on, and drop the ``(namespace, doc_id)`` records it covered.

        With ``namespace`` the revocation holds in that namespace only (a tenant's call), and only
        its records are dropped; without, it holds everywhere (an operator's call). Records the
        value covers that ``purge`` does not list (written by another process into a shared
        ledger) are dropped too, and listed in the audit event after ``purge``.

        A manifest revocation also withholds, from now on, the content hashes of exactly the
        documents ingested under that manifest, in the namespaces they were ingested in: what a
        manifest merely *lists* is never withheld (it may be another tenant's text).

        Returns:
            ``(namespace, content_hash)`` of everything this revocation withholds from now on;
            ``("*", hash)`` for an index-wide content-hash revocation.
        """
        check_reason(reason)
        if conn is None:
            with self.transaction() as tx:
                return self.revoke(kind, value, reason, purge=purge, conn=tx, namespace=namespace)
        now = time.time()
        if namespace is None:
            self._execute(conn, self._d.replace_revocation, (kind, value, reason, now))
        else:
            self._execute(conn, self._d.replace_scoped_revocation, (namespace, kind, value, reason, "", now))
        column = "content_hash" if kind == "content_hash" else "manifest_id"
        scope = "" if namespace is None else " AND namespace = ?"
        covered = self._execute(
            conn, f"SELECT namespace, doc_id, content_hash FROM documents WHERE {column} = ?{scope} ORDER BY rowid",
            (value,) if namespace is None else (value, namespace)).fetchall()
        listed = set(purge) if namespace is None else {p for p in purge if p[0] == namespace}
        others = [(ns, d) for ns, d, _ in covered if (ns, d) not in listed]
        withheld: list[tuple[str, str]]
        if kind == "content_hash":
            withheld = [(namespace or "*", value)]
        else:
            withheld = sorted({(ns, h) for ns, _, h in covered})
            self._d.executemany(self._d.replace_scoped_revocation,
                                [(ns, "content_hash", h, reason, f"manifest:{value}", now) for ns, h in withheld])
        self.delete_documents([*listed, *others], conn=conn)
        self._d.changed()
        self._audit(conn, "revoked", namespace, {
            "kind": kind, "value": value, "reason": reason, "scope": namespace or "*",
            "documents": [list(p) for p in [*listed, *others]],
            "withheld": [list(p) for p in withheld]})
        return withheld

    def delete_documents(self, keys: Sequence[tuple[str, str]], *, conn: LedgerConnection | None = None) -> None:
        """Drop the records of ``(namespace, doc_id)`` pairs."""
        if conn is None:
            with self.transaction() as tx:
                self.delete_documents(keys, conn=tx)
            return
        self._d.executemany("DELETE FROM documents WHERE namespace = ? AND doc_id = ?", keys)

    def revocations(self) -> list[dict[str, Any]]:
        """Every revocation: index-wide ones (``namespace`` None) and namespace-scoped ones; the
        hashes a manifest revocation withholds are listed under that manifest, not here."""
        rows = [(at, k, v, r, None) for k, v, r, at in
                self._rows("SELECT kind, value, reason, created_at FROM revocations")]
        rows += [(at, k, v, r, ns) for ns, k, v, r, at in self._rows(
            "SELECT namespace, kind, value, reason, created_at FROM scoped_revocations WHERE cause = ''")]
        rows.sort(key=lambda row: row[0])
        return [{"kind": k, "value": v, "reason": r, "at": at, "namespace": ns} for at, k, v, r, ns in rows]

    def revoked_hashes(self, namespace: str | None = None) -> frozenset[str]:
        """Every content hash that must stay out of ``namespace``: revoked index-wide, revoked in
        that namespace, or ingested there under a revoked manifest (without ``namespace``: the
        index-wide ones only)."""
        with self._lock:
            if not self._in_transaction:  # a search-only process must recover from a dropped session
                self._d.reconnect()
            version = self._d.version()  # read first: a revocation after it makes the next call reload
            cached = self._revoked_hashes
            if cached is None or version != self._revoked_version:
                cached = self._revoked_hashes = self._read_revoked_hashes()
                self._revoked_version = version
            everywhere, scoped = cached
            if namespace is None:
                return everywhere
            own = scoped.get(namespace)
            return everywhere if own is None else everywhere | own

    def _read_revoked_hashes(self) -> tuple[frozenset[str], dict[str, frozenset[str]]]:
        """Index-wide revoked hashes, and per namespace the scoped ones, from the database."""
        scoped: dict[str, set[str]] = {}
        for ns, value in self._rows(
                "SELECT namespace, value FROM scoped_revocations WHERE kind = 'content_hash'"):
            scoped.setdefault(ns, set()).add(value)
        return frozenset(self.revoked("content_hash")), {ns: frozenset(v) for ns, v in scoped.items()}

    def manifest_revoked(self, manifest_id: str, namespace: str) -> bool:
        """Whether ``manifest_id`` is revoked index-wide or in ``namespace``."""
        return bool(self._rows(
            "SELECT 1 FROM revocations WHERE kind = 'manifest' AND value = ?"
            " UNION ALL SELECT 1 FROM scoped_revocations WHERE kind = 'manifest' AND value = ? AND namespace = ?",
            (manifest_id, manifest_id, namespace)))

    def frozen(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT namespace FROM frozen ORDER BY namespace")]

    def revoked(self, kind: RevocationKind) -> set[str]:
        return {r[0] for r in self._rows("SELECT value FROM revocations WHERE kind = ?", (kind,))}

    def freeze(self, namespace: str, reason: str) -> None:
        check_reason(reason)
        with self.transaction() as tx:
            self._execute(tx, self._d.replace_frozen, (namespace, reason, time.time()))
            self._audit(tx, "namespace_frozen", namespace, {"reason": reason})

    def unfreeze(self, namespace: str) -> None:
        with self.transaction() as tx:
            self._execute(tx, "DELETE FROM frozen WHERE namespace = ?", (namespace,))
            self._audit(tx, "namespace_unfrozen", namespace, {})

    def is_frozen(self, namespace: str) -> bool:
        return bool(self._rows("SELECT 1 FROM frozen WHERE namespace = ?", (namespace,)))
