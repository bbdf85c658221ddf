"""The public surface, the exception tree, the CLI and the demo."""

from __future__ import annotations

import subprocess
import sys

import pytest

import guarded_retriever as gr


def _isort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


def test_public_names_are_exported_and_sorted():
    assert gr.__all__ == sorted(gr.__all__, key=_isort_key)
    for name in gr.__all__:
        assert hasattr(gr, name), name


def test_every_error_is_in_the_one_tree():
    errors = [getattr(gr, n) for n in gr.__all__ if isinstance(getattr(gr, n), type)
              and issubclass(getattr(gr, n), BaseException)]
    assert len(errors) >= 15
    assert all(issubclass(e, gr.GuardedRetrieverError) for e in errors)
    assert issubclass(gr.NamespaceError, ValueError) and issubclass(gr.MissingExtraError, ImportError)
    assert issubclass(gr.SignatureError, gr.ManifestError)


def test_core_import_pulls_no_framework():
    code = ("import sys, guarded_retriever; "
            "print(any(m.startswith(('langchain', 'llama_index', 'torch', 'sentence_transformers')) "
            "for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_version_and_help():
    from guarded_retriever.cli import main

    assert main(["--version"]) == 0
    assert main([]) == 2


def test_demo_runs_with_the_hashing_embedder(capsys):
    from guarded_retriever.cli import main

    assert main(["demo", "--embedder", "hashing"]) == 0
    out = capsys.readouterr().out
    at_ingest = out.split("ingest decisions (quarantined at ingest):", 1)[1].split("\n\n", 1)[0]
    # The three planted instructions go at ingest whatever the embedder. The copied-question family
    # needs semantic vectors to be seen as one (the MiniLM test below): hashing vectors are not.
    assert {"acme-support-03", "globex-mail-02", "globex-wiki-02"} <= set(at_ingest.split())
    queries = [line for line in out.splitlines() if line.startswith(("[acme]", "[globex]"))]
    assert len(queries) == out.count("   ΔS ") == 10  # every sample query ran and reported its ΔS


@pytest.mark.embed
def test_demo_with_minilm_quarantines_the_paraphrase_cluster():
    pytest.importorskip("sentence_transformers")
    from guarded_retriever._demo import build_demo_index, namespace

    index, _ = build_demo_index(gr.MiniLMEmbedder())
    result = index.search("How do I reset my Acme Cloud password?", namespace=namespace("acme"), k=3)
    quarantined = {h.id for h in result.quarantined}
    assert {"acme-forum-03", "acme-forum-04", "acme-tips-01"} <= quarantined
    assert result.kept[0].id == "acme-account-01"
    gr.validate_contract(result.contract())
    globex = index.search("How do I reset my password?", namespace=namespace("globex"), k=10)
    assert all(h.id.startswith("globex-") for h in globex.kept + globex.quarantined)
