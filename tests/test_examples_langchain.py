"""``examples/langchain_lcel_chain.py`` runs as CI runs it, and its prompt never carries poison."""

from __future__ import annotations

import ast
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

import guarded_retriever as gr

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "langchain_lcel_chain.py"


def _listed(out: str, label: str) -> list[str]:
    line = next(ln for ln in out.splitlines() if ln.startswith(f"{label}: "))
    return list(ast.literal_eval(line.removeprefix(f"{label}: ")))


def test_the_example_runs_and_prints_a_guarded_answer():
    run = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    kept, quarantined = _listed(out, "kept"), _listed(out, "quarantined")
    assert "acme-forum-2" in quarantined and "acme-forum-2" not in kept
    assert kept and all(i.startswith("acme-") for i in kept)
    assert "event: quarantined acme-forum-2 at ingest" in out
    answer = out.split("== answer ==", 1)[1]
    assert "Citations" in answer and "[acme-kb-1]" in answer and "acme-kb-1" in kept
    assert "λ_state: " in out


def test_the_prompt_the_model_receives_carries_the_contract_and_no_poison():
    example: dict[str, Any] = runpy.run_path(str(EXAMPLE), run_name="langchain_lcel_chain")
    retriever = example["build_store"]().as_guarded_retriever(k=3)
    seen: list[str] = []
    chain = (
        {"question": RunnablePassthrough(), "contract": retriever.as_contract(output="json")}
        | ChatPromptTemplate.from_template(gr.CITE_THEN_EXPLAIN_PROMPT)
        | RunnableLambda(lambda prompt: seen.append(prompt.to_string()) or "ok")
    )
    chain.invoke(example["QUESTION"])
    (prompt,) = seen
    assert example["QUESTION"] in prompt and '"snippet_id": "acme-kb-1"' in prompt
    assert (
        example["FORUM"]["acme-forum-2"][:40] not in prompt
    )  # withheld text never reaches the model
    assert '"snippet_id": "acme-forum-2"' in prompt  # ...only its id, under quarantined
    assert "globex" not in prompt
