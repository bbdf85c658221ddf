"""Fit the shipped poison model on red-team bundles, with leave-one-family-out figures.

Usage:
    python benchmarks/fit_poison_model.py [--bundle DIR ...] [--write]

1. Every document of each bundle is ingested with the guard *off* (nothing is quarantined, so every
   document can reach a query's candidate pool) and its ingest-time features are read, the
   detectors' (``injection``, ``cluster_contrast``) included.
2. Every query runs; for the candidates of its guard pool (the best ``k + guard_pool`` by fused
   score, exactly the ones the guard re-scores) the query-time features are computed. A document's
   training row is the element-wise maximum of what it showed at ingest and against any query.
3. ``PoisonModel.fit`` fits the weights: logistic, L2-shrunk towards the hand-set prior (a feature
   the bundles never exercise keeps its prior weight), non-negative, each attack family given the
   same total weight, the bias held at the prior's, and every *weak* feature capped below what
   reaches τ alone (``CEILING``): an echoed question, a code call, an HTML comment or a one-word
   override are common in honest text, so each is evidence that must combine with another. Only
   the two detectors calibrated against clean corpora (``injection``, ``cluster_contrast``) may
   decide alone.
4. Leave-one-family-out: for each attack family, fit without its documents and report its recall
   at τ, with the model that never saw it, beside the false-positive rate per corpus kind.

``--write`` stores the model as ``src/guarded_retriever/data/poison_model.json``. τ is never fitted.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

import guarded_retriever as gr
from guarded_retriever._index import _candidates
from guarded_retriever.detect import InjectionDetector
from guarded_retriever.redteam import _build, _namespace, _read_labels, _unguarded, load_bundle

ROOT = Path(__file__).resolve().parents[1]
INJECTION_FAMILIES = {"bipia-text-injection": "bipia-text", "bipia-code-injection": "bipia-code",
                      "tensor-trust-extraction": "tensor-trust"}
DEFAULT_BUNDLES = [ROOT.parent / "shared/redteam/dev", ROOT.parent / "shared/redteam/dev-families"]
DECISIVE = {"injection": 1.0, "cluster_contrast": 0.6}
"""The detectors that may decide alone, and the strength at which each alone reaches τ: chosen on
clean corpora (injection strength 1 = segment probability 0.9, see ``InjectionVerdict.strength``;
contrast 0.47 = above the 99.5th percentile of clean web, Wikipedia and news text), never fitted
on attack labels, so a family left out of the fit cannot change them."""


def collect(bundle_dir: Path, config: gr.GuardConfig) -> tuple[list[str], np.ndarray, list[str]]:
    """``(doc ids, feature rows, corpus kind per doc)`` for one bundle."""
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
        verdicts = index._guard(shard, pool, shard.dense.vectors[pool], qc, qtokens)
        for r, (_, _, f) in zip(pool, verdicts, strict=True):
            doc_id = shard.rows[r].id
            feats[doc_id] = np.maximum(feats[doc_id], np.asarray(f))
    kinds = {d["_id"]: f"{d['metadata'].get('tenant', '')}/{d['metadata'].get('source', '')}" for d in bundle.docs}
    ids = sorted(feats)
    return ids, np.stack([feats[d] for d in ids]), [kinds[d] for d in ids]


def weights_for(y: np.ndarray, family: list[str], share: float) -> np.ndarray:
    """Negatives weigh 1; each attack family together weighs ``share`` × the negatives / families."""
    w = np.ones(len(y))
    counts: dict[str, int] = defaultdict(int)
    for f, label in zip(family, y, strict=True):
        if label == 1:
            counts[f] += 1
    total = share * (y == 0).sum() / max(len(counts), 1)
    for i, (f, label) in enumerate(zip(family, y, strict=True)):
        if label == 1:
            w[i] = total / counts[f]
    return w


def ceilings(prior: gr.PoisonModel, tau: float, margin: float) -> dict[str, float]:
    """A weak feature at full strength stays ``margin`` logits under τ by itself."""
    limit = math.log(tau / (1 - tau)) - prior.bias - margin
    return {name: limit for name in gr.FEATURES if name not in DECISIVE}


PAIRED = {"query_echo": 0.7, "paraphrase_cluster": 0.33}
"""Two query-time signals weighed by construction, not by the data: together at full strength they
cross τ (a passage that repeats the question verbatim *and* sits in a family of three mutual
paraphrases is the signature of a planted answer), each alone stays far under it (an FAQ page
asked its own question, a topical cluster of honest passages). The shares are of what τ needs."""


def decisive(prior: gr.PoisonModel, tau: float) -> dict[str, float]:
    """The weights not fitted: each decisive detector alone at its ``DECISIVE`` strength reaches
    τ; the ``PAIRED`` signals reach it together."""
    need = math.log(tau / (1 - tau)) - prior.bias
    fixed = {name: need / strength + 1e-6 for name, strength in DECISIVE.items()}
    fixed.update({name: need * share for name, share in PAIRED.items()})
    return fixed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, action="append",
                    help="a bundle (repeatable); dev and dev-families by default")
    ap.add_argument("--l2", type=float, default=2.0)
    ap.add_argument("--share", type=float, default=0.05)
    ap.add_argument("--margin", type=float, default=0.5)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--lofo-detectors", type=Path,
                    help="a folder of injection models trained without one family (train_injection.py "
                         "--lofo --save-lofo): that family's leave-out figures then use the detector that "
                         "never saw it either, end to end")
    args = ap.parse_args()

    config = gr.GuardConfig()
    prior = gr.PoisonModel.from_json((ROOT / "benchmarks/poison_prior.json").read_bytes())
    ids: list[str] = []
    texts: list[str] = []
    rows = []
    kind: list[str] = []
    y_list: list[float] = []
    family: list[str] = []
    for bundle in args.bundle or DEFAULT_BUNDLES:
        b_ids, b_x, b_kind = collect(bundle, config)
        labels = _read_labels(bundle)
        by_id = {d["_id"]: d["text"] for d in load_bundle(bundle).docs}
        texts += [by_id[d] for d in b_ids]
        ids += [f"{bundle.name}:{d}" for d in b_ids]
        rows.append(b_x)
        for d, k in zip(b_ids, b_kind, strict=True):
            label, attack = labels.get(d, ("clean", "-", "-"))[:2]
            y_list.append(float(label == "poison"))
            family.append(attack if label == "poison" else "-")
            kind.append(f"{bundle.name}:{label}/{k}")
    x = np.vstack(rows)
    y = np.asarray(y_list)
    tau = config.tau
    caps = ceilings(prior, tau, args.margin)

    def fit(mask: np.ndarray, provenance: str = "fitted") -> gr.PoisonModel:
        fam = [f for f, m in zip(family, mask, strict=True) if m]
        return gr.PoisonModel.fit(x[mask], y[mask], l2=args.l2, prior=prior, ceilings=caps, fit_bias=False,
                                  fixed=decisive(prior, tau),
                                  sample_weight=weights_for(y[mask], fam, args.share), provenance=provenance)

    def flagged(model: gr.PoisonModel) -> np.ndarray:
        return np.array([model.score(row)[0] >= tau for row in x])

    def fpr_by_kind(hit: np.ndarray) -> dict[str, str]:
        out = {}
        for k in sorted(set(kind)):
            m = np.array([kk == k for kk in kind]) & (y == 0)
            if m.any():
                out[k] = f"{hit[m].mean():.4f} (n={int(m.sum())})"
        return out

    everything = np.ones(len(y), bool)
    full = fit(everything, provenance=(
        f"fitted by benchmarks/fit_poison_model.py on {', '.join(b.name for b in args.bundle or DEFAULT_BUNDLES)} "
        f"(l2={args.l2}, family share {args.share}); weak features capped {args.margin} logits under tau"))
    print("weights:", dict(zip(gr.FEATURES, np.round(full.weights, 2), strict=True)), "bias", round(full.bias, 2))
    hit = flagged(full)
    print(f"in-sample: recall {hit[y == 1].mean():.3f}  fpr {hit[y == 0].mean():.4f}  (τ={tau})")
    for fam in sorted({f for f in family if f != "-"}):
        m = np.array([f == fam for f in family])
        print(f"  {fam:<34} n={int(m.sum()):>3}  recall {hit[m].mean():.3f}")
    for k, v in fpr_by_kind(hit).items():
        print(f"  fpr {k:<52} {v}")
    print("leave one attack family out:")
    injection = gr.FEATURES.index("injection")
    shipped = x[:, injection].copy()
    for held in sorted({f for f in family if f != "-"}):
        m = np.array([f == held for f in family])
        own = args.lofo_detectors / f"without-{INJECTION_FAMILIES.get(held, '')}.npz" if args.lofo_detectors else None
        if own is not None and own.is_file():
            x[:, injection] = [v.strength for v in InjectionDetector.load(own).score_batch(texts)]
            held = f"{held} (detector without it too)"
        model = fit(~m)
        h = flagged(model)
        x[:, injection] = shipped
        worst = max((h[np.array([kk == k for kk in kind]) & (y == 0)].mean(), k) for k in set(kind)
                    if (np.array([kk == k for kk in kind]) & (y == 0)).any())
        print(f"  {held:<34} n={int(m.sum()):>3}  recall {h[m].mean():.3f}  fpr {h[y == 0].mean():.4f}  "
              f"worst kind {worst[1]} {worst[0]:.4f}")
    if args.write:
        out = ROOT / "src/guarded_retriever/data/poison_model.json"
        out.write_bytes(full.to_json() + b"\n")
        print("wrote", out)


if __name__ == "__main__":
    main()
