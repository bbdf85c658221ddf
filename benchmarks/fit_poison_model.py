"""Fit the shipped poison model on a red-team bundle, with leave-one-attack-family-out figures.

Usage:
    python benchmarks/fit_poison_model.py [--bundle ../shared/redteam/dev] [--write]

1. Every document of the bundle is ingested with the guard *off* (nothing is quarantined, so every
   document can reach a query's candidate pool) and its ingest-time features are read.
2. Every query runs; for the candidates of its guard pool (the best ``k + guard_pool`` by fused
   score, exactly the ones the guard re-scores) the query-time features are computed. A document's
   training row is the element-wise maximum of what it showed at ingest and against any query.
3. ``PoisonModel.fit`` fits the weights: logistic, L2-shrunk towards the hand-set prior (a feature
   the bundle never exercises keeps its prior weight), weights kept non-negative, each attack family
   given the same total weight so the largest family does not decide alone.
4. Leave-one-family-out: for each attack family, fit without its documents and report its recall at
   the configured τ, and the false-positive rate, with the model that never saw it.

``--write`` stores the model as ``src/guarded_retriever/data/poison_model.json``. τ is never fitted.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

import guarded_retriever as gr
from guarded_retriever._index import _candidates
from guarded_retriever.redteam import _build, _namespace, _read_labels, _unguarded, load_bundle

ROOT = Path(__file__).resolve().parents[1]


def collect(bundle_dir: Path, config: gr.GuardConfig) -> tuple[list[str], np.ndarray]:
    bundle = load_bundle(bundle_dir)
    off_config, off_model = _unguarded(config)
    index = _build(bundle, off_config, off_model, None)
    feats: dict[str, np.ndarray] = {}
    for shard in index.main.shards.values():
        for doc_id, pos in shard.positions.items():
            feats[doc_id] = np.asarray(shard.rows[pos].features)
    k = 10
    for qi, q in enumerate(bundle.queries):
        ns = gr.Namespace.of(**_namespace(q["metadata"]["tenant"]))
        shard = index.main.shards.get(ns.key)
        if shard is None:
            continue
        qc = gr.canonicalize(q["text"])
        qtokens = gr.tokenize(qc)
        assert bundle.query_vectors is not None
        qvec = np.asarray(bundle.query_vectors[qi], dtype=np.float32)
        cands = _candidates(shard, qtokens, qvec, max(config.candidates, k))
        if cands is None:
            continue
        fused = index._fuse(shard, cands)
        pool = cands.rows[np.lexsort((cands.rows, -fused))[: k + config.guard_pool]].tolist()
        _, _, query_feats = index._guard(shard, pool, qc, qtokens)
        for r, f in query_feats.items():
            doc_id = shard.rows[r].id
            feats[doc_id] = np.maximum(feats[doc_id], np.asarray(f))
    ids = sorted(feats)
    return ids, np.stack([feats[d] for d in ids])


def weights_for(y: np.ndarray, family: list[str], share: float) -> np.ndarray:
    """Negatives weigh 1; each attack family together weighs ``share`` × the negatives / families."""
    w = np.ones(len(y))
    families = sorted({f for f, label in zip(family, y, strict=True) if label == 1})
    counts = defaultdict(int)
    for f, label in zip(family, y, strict=True):
        if label == 1:
            counts[f] += 1
    total = share * (y == 0).sum() / max(len(families), 1)
    for i, (f, label) in enumerate(zip(family, y, strict=True)):
        if label == 1:
            w[i] = total / counts[f]
    return w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT.parent / "shared/redteam/dev")
    ap.add_argument("--l2", type=float, default=2.0)
    ap.add_argument("--share", type=float, default=0.05)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    config = gr.GuardConfig()
    prior = gr.PoisonModel.from_json((ROOT / "benchmarks/poison_prior.json").read_bytes())
    ids, x = collect(args.bundle, config)
    labels = _read_labels(args.bundle)
    y = np.array([labels.get(d, ("clean",))[0] == "poison" for d in ids], dtype=np.float64)
    family = [labels.get(d, ("clean", "-"))[1] for d in ids]
    hard = np.array([labels.get(d, ("clean",))[0] == "benign_hard" for d in ids])
    tau = config.tau

    def evaluate(model: gr.PoisonModel, mask: np.ndarray) -> tuple[float, float, float]:
        scores = np.array([model.score(row)[0] for row in x])
        flagged = scores >= tau
        return (float(flagged[mask].mean()), float(flagged[y == 0].mean()), float(flagged[hard].mean()))

    full = gr.PoisonModel.fit(x, y, l2=args.l2, sample_weight=weights_for(y, family, args.share),
                              prior=prior, provenance=f"fitted on {args.bundle.name} (l2={args.l2}, "
                              f"family share {args.share}); shrunk towards the hand-set prior")
    print("weights:", dict(zip(gr.FEATURES, np.round(full.weights, 2), strict=True)), "bias", round(full.bias, 2))
    recall, fpr, fpr_hard = evaluate(full, y == 1)
    print(f"in-sample  recall {recall:.3f}  fpr {fpr:.4f}  fpr_benign_hard {fpr_hard:.4f}  (τ={tau})")
    prior_recall, prior_fpr, prior_hard = evaluate(prior, y == 1)
    print(f"prior      recall {prior_recall:.3f}  fpr {prior_fpr:.4f}  fpr_benign_hard {prior_hard:.4f}")
    print("leave one attack family out:")
    for held in sorted({f for f, label in zip(family, y, strict=True) if label == 1}):
        keep = np.array([not (label == 1 and f == held) for f, label in zip(family, y, strict=True)])
        fam = [f for f, k in zip(family, keep, strict=True) if k]
        model = gr.PoisonModel.fit(x[keep], y[keep], l2=args.l2, prior=prior,
                                   sample_weight=weights_for(y[keep], fam, args.share))
        mask = np.array([label == 1 and f == held for f, label in zip(family, y, strict=True)])
        r, f_, h = evaluate(model, mask)
        print(f"  {held:<32} n={int(mask.sum()):>3}  recall {r:.3f}  fpr {f_:.4f}  fpr_benign_hard {h:.4f}")
    if args.write:
        out = ROOT / "src/guarded_retriever/data/poison_model.json"
        out.write_bytes(full.to_json() + b"\n")
        print("wrote", out)


if __name__ == "__main__":
    main()
