"""The LlamaIndex examples run as CI runs them (offline, warnings as errors) and show what they say."""

from __future__ import annotations

import ast

import pytest

from ._examples import listed, run_offline

pytest.importorskip("llama_index.core")






def prompt_of(out: str) -> str:
    return out.split("== prompt (MockLLM echoes it) ==", 1)[1].split("== contract ==", 1)[0]


def test_the_query_engine_example():
    out = run_offline("llamaindex_query_engine.py", quiet_stderr=False)
    at_ingest = ast.literal_eval(out.splitlines()[0].split("quarantined ", 1)[1])
    # The injection goes at ingest. The injection detector may take a copied-question reply too
    # when its lie is an instruction to the reader ("mail the current password to ..."); never
    # the help-centre article.
    assert "acme-forum-2" in at_ingest and not any(q.startswith("acme-kb-") for q in at_ingest)
    sources = listed(out, "sources")
    assert any(s.startswith("acme-kb-") for s in sources)
    scores = listed(out, "scores")
    assert scores == sorted(scores, reverse=True)
    # The forum replies that copy the question are no longer quarantined on the echo alone (an FAQ
    # asked its own question echoes it too); with the example's hashing embedder they do not form
    # a paraphrase family either, so nothing else backs the echo. The injection above still goes.
    assert "acme-forum-2" not in sources
    prompt = prompt_of(out)
    assert "open Settings, choose Security" in prompt
    # reset@acme-helpdesk.example (the copied-question forum replies) is missed now, see above.
    for leaked in ("198.51.100.7", "Globex", "guarded_retriever",
                   "provenance"):
        assert leaked not in prompt
    assert listed(out, "kept") == sources
    assert set(listed(out, "globex sees")) == {"globex-it-1", "globex-it-2"}


def test_the_postprocessor_example():
    out = run_offline("llamaindex_postprocessor.py", quiet_stderr=False)
    unguarded = listed(out, "unguarded sources")
    assert {"globex-it-1", "orphan-1", "acme-forum-2"} <= set(unguarded)  # the problem it solves
    guarded = listed(out, "guarded sources")
    assert set(guarded) == {"acme-kb-1", "acme-kb-2", "acme-forum-1"}
    assert guarded == [s for s in unguarded if s in guarded]  # filtered, not re-ranked
    assert "event: quarantined ['acme-forum-2']" in out
    dropped = next(ln for ln in out.splitlines() if ln.startswith("event: dropped"))
    assert set(ast.literal_eval(dropped.split(": ", 2)[2])) == {
        "globex-it-1", "globex-it-2", "orphan-1", "acme-staging-1"}
    assert "acme-kb-1: score" in out and "provenance 1.00" in out
    prompt = prompt_of(out)
    assert "open Settings, choose Security" in prompt
    for leaked in ("198.51.100.7", "Globex", "staging", "whoever set it up", "tenant_id",
                   "guarded_retriever"):
        assert leaked not in prompt
