"""``examples/qdrant_existing_store.py`` runs as CI runs it (offline, warnings as errors), and the
guard in front of the existing Qdrant collection fences and re-scores what the store nominates."""

from __future__ import annotations

import runpy
from typing import Any

import pytest

from ._examples import EXAMPLES, listed, run_offline

pytest.importorskip("langchain_qdrant")

EXAMPLE = EXAMPLES / "qdrant_existing_store.py"




def test_the_example_runs_offline_and_prints_what_it_claims():
    out = run_offline(EXAMPLE.name, quiet_stderr=False)
    plain = listed(out, "plain store")
    assert {"forum-evil", "gx-reset"} <= set(plain)  # the problem: the bare store serves both
    guarded = listed(out, "guarded acme")
    assert guarded and all(i.startswith("kb-") for i in guarded)
    assert listed(out, "in review ('support-quarantine')") == ["forum-evil"]
    assert listed(out, "guarded globex") == ["gx-reset"]
    assert "points in 'support': 17 (the 9 old ones" in out  # 8 kept copies; the injection went to review
    for doc_id in guarded:  # the guard's scores, with Qdrant's relevance reported beside them
        assert f"  {doc_id}: fused " in out and "provenance 1.0" in out and "qdrant relevance" in out
    assert listed(out, "after the forged writes") == guarded
    assert "forged text served: False" in out


def test_forged_points_in_the_collection_never_reach_a_result():
    example: dict[str, Any] = runpy.run_path(str(EXAMPLE), run_name="qdrant_existing_store")
    result = example["main"]()
    assert "forged-1" not in result["after"] and "kb-reset" in result["after"]
    legacy = example["LEGACY"]
    # kb-reset's point was overwritten in Qdrant; the guard serves the text it ingested.
    assert legacy["kb-reset"][2] in result["texts"]
    assert not any("evil.example" in t or "198.51.100.7" in t for t in result["texts"])
    assert result["plain"][0] == "kb-reset" and "forum-evil" in result["plain"]
