"""Instrumentation events: what the guard withheld, sent to LlamaIndex's event handlers.

Attach a handler to the root dispatcher (or to ``guarded_retriever.llamaindex``'s) as for any
LlamaIndex event::

    from llama_index.core.instrumentation import get_dispatcher
    get_dispatcher().add_event_handler(my_handler)   # my_handler.handle(event) sees both kinds

Events are sent only when something was withheld, so a clean query costs no instrumentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import llama_index.core.instrumentation as instrument
from llama_index.core.instrumentation.events import BaseEvent

from .. import SearchResult

if TYPE_CHECKING:  # pragma: no cover
    # llama_index.core re-exports the dispatcher module without declaring the class.
    from llama_index_instrumentation.dispatcher import Dispatcher

__all__ = ["NamespaceViolationEvent", "QuarantineEvent", "emit_guard_events"]

# llama_index.core.instrumentation re-exports get_dispatcher without declaring it (no __all__).
dispatcher = instrument.get_dispatcher("guarded_retriever.llamaindex")  # type: ignore[attr-defined]

Source = Literal["retriever", "postprocessor"]


class QuarantineEvent(BaseEvent):
    """The guard withheld poisoned or quarantined documents from one query's results."""

    source: Source
    """``retriever`` (a :class:`GuardedRetriever` search) or ``postprocessor`` (a screen)."""
    namespace: str
    """The request's canonical namespace key."""
    query: str
    quarantined: list[dict[str, Any]]
    """One ``{"id", "poison", "reasons", "stage"}`` per withheld document; ``stage`` is ``ingest``
    (quarantined when it was added) or ``query`` (by the query-time guard)."""

    @classmethod
    def class_name(cls) -> str:
        return "GuardedRetrieverQuarantineEvent"


class NamespaceViolationEvent(BaseEvent):
    """Documents from outside the request's namespace reached the guard and were dropped."""

    source: Source
    namespace: str
    """The request's canonical namespace key."""
    query: str
    count: int
    """How many were dropped, including those the core dropped without naming them."""
    node_ids: list[str]
    """The ids of the dropped nodes where known: the base store's ids for the retriever, the
    nodes' ``node_id`` for the postprocessor."""

    @classmethod
    def class_name(cls) -> str:
        return "GuardedRetrieverNamespaceViolationEvent"


def _observed() -> bool:
    """Whether any handler would see an event of ours (the dispatcher walks the same chain)."""
    node: Dispatcher | None = dispatcher
    while node is not None:
        if node.event_handlers:
            return True
        node = node.parent if node.propagate else None
    return False


def emit_guard_events(result: SearchResult, source: Source, blocked: Sequence[str] = ()) -> None:
    """Send the events ``result`` calls for; ``blocked`` names the adapter's own dropped nodes.

    Nothing is built when no handler listens: the events are pydantic models, and most queries
    of a guarded index have some quarantined candidate to report.
    """
    if not _observed():
        return
    if result.quarantined:
        dispatcher.event(QuarantineEvent(
            source=source, namespace=result.namespace, query=result.query,
            quarantined=[{"id": h.id, "poison": h.poison, "reasons": list(h.reasons),
                          "stage": h.stage or "query"} for h in result.quarantined],
        ))
    if result.violations:
        dispatcher.event(NamespaceViolationEvent(
            source=source, namespace=result.namespace, query=result.query,
            count=result.violations, node_ids=list(blocked),
        ))
