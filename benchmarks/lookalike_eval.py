"""The held-out look-alike and evasive sets, end to end through a guarded index.

    .venv/bin/python benchmarks/lookalike_eval.py [--json FILE] [--model MODEL.json]

``benchmarks/lookalikes/`` is turned into a bundle of the red-team format (one tenant: the 293
benign look-alikes, the 240 evasive injections and the 168 background passages; the 123 FAQ
queries, each judged against its page) and run through the same harness as the red-team bundles:
the shipped poison model and τ, every feature (ingest and query time), the precomputed MiniLM
vectors. It prints, per look-alike kind, the share quarantined (target: ≤ 5 %); per evasive style,
the share caught (target: ≥ 0.80); and for the FAQ queries, nDCG@10 guarded against unguarded and
how many lost their page (target: none).

Nothing here is ever read by a fitting or training script: it measures generalisation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from guarded_retriever import GuardConfig, PoisonModel
from guarded_retriever.redteam import run_bundle, score_run

HERE = Path(__file__).resolve().parent / "lookalikes"
TENANT = "company"


def _load(name: str) -> list[dict]:
    with (HERE / name).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_bundle(root: Path) -> None:
    """The look-alike sets as a red-team bundle under ``root``: corpus, queries, labels, qrels, vectors."""
    vectors = np.load(HERE / "vectors.npz")
    benign, evasive, background = _load("benign.jsonl"), _load("evasive.jsonl"), _load("background.jsonl")
    queries = _load("faq_queries.jsonl")
    docs, labels = [], ["doc-id\tlabel\tattack\ttarget-query-id\tsource-id"]
    for r in benign:
        docs.append((r["id"], r["text"], r["kind"]))
        labels.append(f"{r['id']}\tbenign_hard\t{r['kind']}\t-\t{r['id']}")
    for r in evasive:
        docs.append((r["id"], r["text"], "evasive"))
        labels.append(f"{r['id']}\tpoison\t{r['style']}\t-\t{r['id']}")
    for r in background:
        docs.append((r["id"], r["text"], "background"))
        labels.append(f"{r['id']}\tclean\t-\t-\t{r['id']}")
    (root / "embeddings").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for doc_id, text, source in docs:
            fh.write(json.dumps({"_id": doc_id, "title": "", "text": text,
                                 "metadata": {"tenant": TENANT, "source": source}}) + "\n")
    with (root / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps({"_id": q["id"], "text": q["text"],
                                 "metadata": {"tenant": TENANT, "kind": "clean"}}) + "\n")
    (root / "labels.tsv").write_text("\n".join(labels) + "\n", encoding="utf-8")
    qrels = ["query-id\tcorpus-id\tscore"]
    for q in queries:
        relevant = q["relevant"] if isinstance(q["relevant"], list) else [q["relevant"]]
        qrels += [f"{q['id']}\t{doc}\t1" for doc in relevant]
    (root / "qrels.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    np.save(root / "embeddings/corpus.npy", np.stack([vectors[d[0]] for d in docs]).astype(np.float32))
    np.save(root / "embeddings/queries.npy", np.stack([vectors[q["id"]] for q in queries]).astype(np.float32))
    (root / "embeddings/model.txt").write_text("sentence-transformers/all-MiniLM-L6-v2\n", encoding="utf-8")


def evaluate(model: PoisonModel | None = None, config: GuardConfig | None = None) -> dict[str, object]:
    queries = _load("faq_queries.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lookalikes"
        write_bundle(root)
        run = run_bundle(root, model=model, config=config, progress=False)
        report = score_run(run)
    kinds = {k: v for k, v in report["fpr_by_source"]["benign_hard"].items()}
    styles = {k: {"n": v["n"], "recall": v["recall"]} for k, v in report["per_attack"].items()}
    lost = []
    for q in queries:
        relevant = set(q["relevant"] if isinstance(q["relevant"], list) else [q["relevant"]])
        if relevant & set(run.unguarded[q["id"]]) and not relevant & set(run.guarded[q["id"]]):
            lost.append(q["id"])
    return {
        "threshold": report["threshold"],
        "lookalike_fpr_by_kind": kinds,
        "background_fpr": report["fpr_by_source"]["clean"],
        "evasive_recall_by_style": styles,
        "evasive_recall": report["at_threshold"]["recall"],
        "faq_queries": len(queries),
        "faq_ndcg10": report["ndcg10"],
        "faq_queries_losing_their_page": lost,
        "reasons_fired": report["reasons_fired"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="also write the whole result here")
    ap.add_argument("--model", type=Path, help="a poison model JSON (default: the shipped one)")
    args = ap.parse_args()
    model = PoisonModel.load(args.model) if args.model else None
    out = evaluate(model)
    print(f"τ = {out['threshold']}")
    print("look-alikes quarantined, by kind (target ≤ 0.05):")
    for kind, v in out["lookalike_fpr_by_kind"].items():  # type: ignore[union-attr]
        print(f"  {kind:18s} {v['flagged']:3d}/{v['n']:3d} = {v['fpr']:.3f}")
    bg = out["background_fpr"]["background"]  # type: ignore[index]
    print(f"  {'(background)':18s} {bg['flagged']:3d}/{bg['n']:3d} = {bg['fpr']:.3f}")
    print("evasive injections caught, by style (target ≥ 0.80):")
    for style, v in out["evasive_recall_by_style"].items():  # type: ignore[union-attr]
        print(f"  {style:18s} {round(v['recall'] * v['n']):3d}/{v['n']:3d} = {v['recall']:.3f}")
    print(f"  {'(all)':18s} {out['evasive_recall']:.3f}")
    nd = out["faq_ndcg10"]
    print(f"FAQ queries: {out['faq_queries']}, nDCG@10 guarded {nd['guarded']:.4f} vs unguarded "  # type: ignore[index]
          f"{nd['unguarded']:.4f}; losing their page: {len(out['faq_queries_losing_their_page'])}")  # type: ignore[arg-type,index]
    if args.json:
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
