"""The ledger in PostgreSQL: ``Ledger("postgresql://...")`` (the ``postgres`` extra, psycopg 3).

The tables and guarantees are those of the SQLite default (see ``_ledger``, which holds all the
logic); what differs lives here:

- **Schema.** The same tables, translated (``REAL`` → ``DOUBLE PRECISION``, ``BLOB`` → ``BYTEA``,
  ...), plus a ``rowid`` column on ``documents`` that keeps ingest order as SQLite's rowid does
  (a replaced row moves to the end), and a one-row ``ledger_state`` whose ``version`` every
  revocation and restore bumps. The tables live in the connection's current schema, so
  ``?options=-csearch_path%3Dname`` puts several ledgers in one database.
- **The write lock.** Every transaction runs at READ COMMITTED and first takes one
  transaction-scoped advisory lock (one per schema). Writers from any number of processes
  therefore run one after another, as ``BEGIN IMMEDIATE`` orders them in SQLite, and every
  statement after the lock sees all that committed before it: a freeze or a revocation by
  another process is never missed by a batch. Reads take no lock and see committed data.
- **Caches.** ``revoked_hashes()`` is trusted only while ``ledger_state.version`` is still the one
  it was read at (one primary-key read per call), so another process's revocation shows at once.
- **Backup and restore.** A logical copy of the rows into (or out of) an SQLite database, so a
  saved index is the same pickle-free SQLite file whichever backend wrote it.

Open one :class:`~guarded_retriever.Ledger` per process: a connection does not survive a fork.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Sequence
from contextlib import suppress
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ._exceptions import LedgerError, MissingExtraError
from ._ledger import _DOC_COLUMNS, _SCHEMA, COPIED_TABLES, SQLITE_SCHEMA

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresDialect", "redact"]

# The SQLite schema, translated; each pair must apply (checked at import).
_TRANSLATION = (
    ("REAL", "DOUBLE PRECISION"),
    ("BLOB", "BYTEA"),
    ("simhash      INTEGER", "simhash      BIGINT"),
    ("seq        INTEGER PRIMARY KEY AUTOINCREMENT", "seq        BIGSERIAL PRIMARY KEY"),
    ("    PRIMARY KEY (namespace, doc_id)",
     "    rowid        BIGSERIAL NOT NULL,\n    PRIMARY KEY (namespace, doc_id)"),
)


def _translate(schema: str) -> str:
    for old, new in _TRANSLATION:
        if old not in schema:
            raise AssertionError(f"the SQLite schema no longer contains {old!r}")
        schema = schema.replace(old, new)
    return schema + """
CREATE INDEX IF NOT EXISTS documents_by_rowid ON documents (rowid);
CREATE TABLE IF NOT EXISTS ledger_state (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO ledger_state VALUES (1, 0) ON CONFLICT DO NOTHING;
"""


_PG_SCHEMA = _translate(_SCHEMA)
_LOCK_CLASS = 0x4752  # "GR": the advisory lock's first key; the second is the schema's crc32
# How long a write waits for another process's batch; a batch holds the lock only to write its rows.
_WRITE_LOCK_TIMEOUT_MS = 30_000


def _insert(table: str, columns: str) -> str:
    return f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(columns.split(',')))})"


def _upsert(table: str, columns: str, keys: str, update: Sequence[str]) -> str:
    """SQLite's ``INSERT OR REPLACE``: the new row wins (``rowid`` takes the new row's value too)."""
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in update)
    return f"{_insert(table, columns)} ON CONFLICT ({keys}) DO UPDATE SET {sets}"


@lru_cache(maxsize=256)
def _sql(query: str) -> str:
    """The ledger writes ``?`` placeholders (SQLite's); psycopg's are ``%s``."""
    return query.replace("?", "%s")


_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def redact(url: str) -> str:
    """``url`` without its passwords (in the netloc or libpq's query parameters), for messages."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k in _SECRET_PARAMS for k, _ in query):
        parts = parts._replace(query=urlencode([(k, "***" if k in _SECRET_PARAMS else v) for k, v in query], safe="*"))
    return urlunsplit(parts)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise MissingExtraError("postgres", "psycopg") from None
    return psycopg


class PostgresDialect:
    """A PostgreSQL connection that speaks the ledger's statements (see the module docstring)."""

    insert_manifest = "INSERT INTO manifests VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
    write_documents = _upsert("documents", _DOC_COLUMNS, "namespace, doc_id",
                              [*(c.strip() for c in _DOC_COLUMNS.split(",")[2:]), "rowid"])
    replace_revocation = _upsert("revocations", "kind, value, reason, created_at", "kind, value",
                                 ["reason", "created_at"])
    replace_scoped_revocation = _upsert("scoped_revocations", "namespace, kind, value, reason, cause, created_at",
                                        "namespace, kind, value", ["reason", "cause", "created_at"])
    replace_frozen = _upsert("frozen", "namespace, reason, created_at", "namespace", ["reason", "created_at"])
    bind_manifest = "INSERT INTO manifest_namespaces VALUES (?, ?, ?) ON CONFLICT DO NOTHING"

    def __init__(self, url: str) -> None:
        self._pg = _psycopg()
        self._url = url
        self.errors: tuple[type[Exception], ...] = (self._pg.Error,)
        try:
            self._open()
        except self._pg.Error as exc:
            raise LedgerError(f"cannot open ledger at {redact(url)!r}: {exc}") from exc

    def _open(self) -> None:
        self._conn: psycopg.Connection[tuple[Any, ...]] = self._pg.connect(self._url, autocommit=True)
        try:
            schema = self._conn.execute("SELECT current_schema()").fetchone()
            if schema is None or schema[0] is None:
                raise LedgerError(f"cannot open ledger at {redact(self._url)!r}: no schema on the search_path exists")
            self._key = (_LOCK_CLASS, zlib.crc32(str(schema[0]).encode()) - (1 << 31))
            self._begin()  # concurrent first opens must not race on CREATE TABLE IF NOT EXISTS
            self._conn.execute(_PG_SCHEMA)
            self._conn.execute("COMMIT")
        except BaseException:
            # A half-open session (say, no CREATE privilege) sits in an aborted transaction that
            # reconnect() would not notice; close it so the next call starts clean.
            self._conn.close()
            raise

    def reconnect(self) -> None:
        """After the server dropped the session (a restart, a failover), the next call opens a new one."""
        if self._conn.broken:
            self._conn.close()
            self._open()

    @property
    def conn(self) -> psycopg.Connection[tuple[Any, ...]]:
        return self._conn

    @staticmethod
    def sql(query: str) -> str:
        return _sql(query)

    def begin(self) -> None:
        try:
            self._begin()
        except self._pg.OperationalError:
            if not self._conn.broken:
                raise
            self.reconnect()  # the session was gone before this transaction sent anything: once more
            self._begin()

    def _begin(self) -> None:
        # READ COMMITTED, not REPEATABLE READ: each statement after the lock must see what the
        # writer before us committed while we waited for it.
        self._conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        try:
            # A writer stuck in another process must not stall every other writer (and, through
            # the index's write lock, every search) forever: give up with an error instead.
            self._conn.execute(f"SET LOCAL lock_timeout = '{_WRITE_LOCK_TIMEOUT_MS}ms'")
            self._conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", self._key)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(_sql(query), rows)

    def version(self) -> int | None:
        row = self._conn.execute("SELECT version FROM ledger_state WHERE id = 1").fetchone()
        return None if row is None else int(row[0])

    def changed(self) -> None:
        self._conn.execute("UPDATE ledger_state SET version = version + 1 WHERE id = 1")

    def backup_to(self, target: sqlite3.Connection) -> None:
        """Copy every row into ``target`` (an empty SQLite database) from one consistent snapshot."""
        target.executescript(SQLITE_SCHEMA)
        try:
            self.reconnect()
            self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                for table, columns, order in COPIED_TABLES:
                    insert = _insert(table, columns)
                    with self._conn.cursor(name=f"gr_backup_{table}") as cur:
                        cur.execute(f"SELECT {columns} FROM {table} ORDER BY {order}")
                        while rows := cur.fetchmany(5000):
                            target.executemany(insert, rows)
            finally:
                self._conn.execute("COMMIT")
        except self.errors as exc:
            target.rollback()
            raise LedgerError(f"cannot copy the ledger: {exc}") from exc
        target.commit()

    def restore_from(self, source: sqlite3.Connection, tables: Sequence[tuple[str, str, str]]) -> None:
        """Fill an empty ledger with the rows of ``source``'s ``tables`` (an SQLite ledger), in one
        transaction.

        Raises:
            LedgerError: the ledger already holds rows. A PostgreSQL ledger is shared: replacing
                it would erase other processes' documents, revocations and audit trail, and lost
                revocations fail open. Load into a fresh schema instead.
        """
        try:
            self.reconnect()
            self.begin()
            try:
                held = [t for t, _, _ in COPIED_TABLES
                        if self._conn.execute(f"SELECT EXISTS (SELECT 1 FROM {t})").fetchone() == (True,)]
                if held:
                    raise LedgerError(f"cannot load into {redact(self._url)!r}: it already holds rows "
                                      f"({', '.join(held)}); load into an empty schema")
                for table, columns, order in tables:
                    rows = source.execute(f"SELECT {columns} FROM {table} ORDER BY {order}").fetchall()
                    self.executemany(_insert(table, columns), rows)
                self._conn.execute("SELECT setval(pg_get_serial_sequence('audit_events', 'seq'),"
                                   " COALESCE(MAX(seq), 0) + 1, false) FROM audit_events")
                self.changed()
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except self.errors as exc:
            raise LedgerError(f"cannot restore the ledger: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

    def __del__(self) -> None:
        # A ledger is closed with its index, which has no close(): like an SQLite connection,
        # this one just closes when it is collected (psycopg would warn about it otherwise).
        conn = getattr(self, "_conn", None)
        if conn is not None:
            with suppress(Exception):
                conn.close()
