"""Custom callback events: what the guard withheld, and what crossed a namespace fence.

Both events go through LangChain's ``dispatch_custom_event`` / ``adispatch_custom_event``, so they
reach ``BaseCallbackHandler.on_custom_event`` and show up in ``astream_events`` as
``on_custom_event`` with the event's name:

``guarded_retriever.quarantine``
    ``{"namespace", "query", "hits": [{"id", "poison", "reasons", "stage"}]}``: the guard withheld
    these candidates (``stage`` is ``ingest`` or ``query``).
``guarded_retriever.namespace_violation``
    ``{"namespace", "source", "count", "ids"}``: documents of another namespace reached a fence and
    were dropped. ``source`` says which fence: ``index`` (the core's exit assert), ``store`` (a base
    store's namespace pre-filter let them through) or ``screen`` (a compressor's input).
"""

from __future__ import annotations

import uuid
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    BaseCallbackManager,
    CallbackManager,
    Callbacks,
)
from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event

from .._index import SearchResult

__all__ = ["NAMESPACE_VIOLATION_EVENT", "QUARANTINE_EVENT", "aemit", "emit", "events_for"]

QUARANTINE_EVENT = "guarded_retriever.quarantine"
NAMESPACE_VIOLATION_EVENT = "guarded_retriever.namespace_violation"


def events_for(
    result: SearchResult, *, source: str = "index", foreign: list[str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The events one guarded search calls for, as ``(name, data)`` pairs."""
    events: list[tuple[str, dict[str, Any]]] = []
    if result.quarantined:
        events.append(
            (
                QUARANTINE_EVENT,
                {
                    "namespace": result.namespace,
                    "query": result.query,
                    "hits": [
                        {
                            "id": h.id,
                            "poison": h.poison,
                            "reasons": list(h.reasons),
                            "stage": h.stage or "query",
                        }
                        for h in result.quarantined
                    ],
                },
            )
        )
    if result.violations:
        events.append(
            (
                NAMESPACE_VIOLATION_EVENT,
                {
                    "namespace": result.namespace,
                    "source": source,
                    "count": result.violations,
                    "ids": list(result.dropped),
                },
            )
        )
    if foreign:
        events.append(
            (
                NAMESPACE_VIOLATION_EVENT,
                {
                    "namespace": result.namespace,
                    "source": "store",
                    "count": len(foreign),
                    "ids": foreign,
                },
            )
        )
    return events


def emit(events: list[tuple[str, dict[str, Any]]], callbacks: Callbacks) -> None:
    """Dispatch ``events`` to ``callbacks`` (a child manager of the current run, or handlers).

    Inside a run (a retriever, a chain) the events attach to that run. A bare list of handlers, as a
    direct ``compress_documents(..., callbacks=[handler])`` call passes, has no run to attach to, so
    the events go out under a fresh run id rather than being lost.
    """
    if not events or not callbacks:
        return
    if isinstance(callbacks, BaseCallbackManager) and callbacks.parent_run_id is not None:
        for name, data in events:
            dispatch_custom_event(name, data, config={"callbacks": callbacks})
        return
    manager = CallbackManager.configure(callbacks)
    for name, data in events:
        manager.on_custom_event(name, data, run_id=uuid.uuid4())


async def aemit(events: list[tuple[str, dict[str, Any]]], callbacks: Callbacks) -> None:
    """The async twin of :func:`emit`."""
    if not events or not callbacks:
        return
    if isinstance(callbacks, BaseCallbackManager) and callbacks.parent_run_id is not None:
        for name, data in events:
            await adispatch_custom_event(name, data, config={"callbacks": callbacks})
        return
    manager = AsyncCallbackManager.configure(callbacks)
    for name, data in events:
        await manager.on_custom_event(name, data, run_id=uuid.uuid4())
