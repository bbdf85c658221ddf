"""A small readers–writer lock: many searches at once, or one write, never both.

Searches read shards that writes mutate in place (row lists, position maps, postings); the lock
keeps a search from seeing half a batch. The writer side is re-entrant for its owning thread,
because a write may call another (``revoke`` inside a CLI command that also saves).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["RWLock", "lock_for"]


class RWLock:
    __slots__ = ("_cond", "_owner", "_readers", "_writer_depth", "_writers_waiting")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._owner: int | None = None
        self._writer_depth = 0
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:  # a writer reading its own state
                self._writer_depth += 1
                reentrant = True
            else:
                # Waiting writers go first, so a stream of searches cannot starve an ingest.
                while self._owner is not None or self._writers_waiting:
                    self._cond.wait()
                self._readers += 1
                reentrant = False
        try:
            yield
        finally:
            with self._cond:
                if reentrant:
                    self._writer_depth -= 1
                else:
                    self._readers -= 1
                    if not self._readers:
                        self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._writer_depth += 1
            else:
                self._writers_waiting += 1
                while self._owner is not None or self._readers:
                    self._cond.wait()
                self._writers_waiting -= 1
                self._owner, self._writer_depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._writer_depth -= 1
                if not self._writer_depth:
                    self._owner = None
                    self._cond.notify_all()


_BY_OBJECT: dict[int, RWLock] = {}
_BY_OBJECT_GUARD = threading.Lock()


def lock_for(obj: object) -> RWLock:
    """The one process-wide :class:`RWLock` of ``obj``, for as long as ``obj`` lives.

    The adapters take it around every sync call into a base vector store: stores that live in
    this process (LangChain's ``InMemoryVectorStore``, LlamaIndex's ``SimpleVectorStore``) are
    plain dicts, and a query that iterates one while another thread adds to it fails ("dictionary
    changed size during iteration"). Keyed by the store, not by the wrapper, because several
    wrappers (namespace views, two retrievers) can share one store.
    """
    key = id(obj)
    with _BY_OBJECT_GUARD:
        lock = _BY_OBJECT.get(key)
        if lock is None:
            lock = _BY_OBJECT[key] = RWLock()
            # The finalizer runs before ``id(obj)`` can be reused by another object; an object
            # that is not weak-referenceable keeps its lock for the life of the process.
            with contextlib.suppress(TypeError):
                weakref.finalize(obj, _BY_OBJECT.pop, key, None)
        return lock
