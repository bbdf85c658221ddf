"""The red-team harness: ingest a bundle, attack it with its queries, and score the guard.

A bundle is a directory in the format of the red-team sets (``corpus.jsonl``, ``queries.jsonl``,
``qrels.tsv``, ``labels.tsv`` and optional ``embeddings/corpus.npy`` / ``embeddings/queries.npy``).
The run has two halves that never meet:

* :func:`run_bundle` reads only the corpus, the queries and the vectors. It ingests every tenant
  into its own namespace of a guarded index and, for comparison, of an *unguarded* one (the same
  hybrid retrieval with the poison weight, the quarantine and the query-time checks off), then runs
  every query in its own tenant through both. What it records — hits, quarantines, each document's
  strongest poison score — is all a production deployment could see.
* :func:`score_run` then reads ``labels.tsv`` and ``qrels.tsv`` and turns the record into the
  report: document-level recall and false-positive rates at the configured τ, the ROC, per-attack
  recall, attack success rates, nDCG@10 / recall@10 and tenant leaks.

A document's score is the largest poison score the guard gave it: at ingest, or at query time
against any query whose candidates it was among. That is exactly what decides whether the guard
would ever have shown it to a model.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ._config import FusionWeights, GuardConfig
from ._embed import as_embedder
from ._exceptions import ConfigError, MissingExtraError
from ._index import GuardedIndex
from ._poison import FEATURES, PoisonModel
from ._policy import TrustPolicy

__all__ = ["BundleRun", "load_bundle", "plot_run", "roc_curve", "run_bundle", "run_redteam", "score_run"]

ASR_DEPTH = 5
EVAL_DEPTH = 10
PRODUCT, ENV = "redteam", "eval"


@dataclass(slots=True)
class Bundle:
    """A red-team bundle without its labels."""

    path: Path
    docs: list[dict[str, Any]]
    queries: list[dict[str, Any]]
    doc_vectors: np.ndarray | None
    query_vectors: np.ndarray | None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle's corpus, queries and (when present) precomputed vectors; never its labels."""
    root = Path(path)
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (root / name).is_file():
            raise ConfigError(f"{root} is not a red-team bundle: {name} is missing")
    docs, queries = _read_jsonl(root / "corpus.jsonl"), _read_jsonl(root / "queries.jsonl")
    doc_vecs = query_vecs = None
    emb = root / "embeddings"
    if (emb / "corpus.npy").is_file() and (emb / "queries.npy").is_file():
        doc_vecs = np.load(emb / "corpus.npy", mmap_mode="r")
        query_vecs = np.load(emb / "queries.npy", mmap_mode="r")
        if len(doc_vecs) != len(docs) or len(query_vecs) != len(queries):
            raise ConfigError(f"{emb}: the vectors do not line up with the jsonl files")
    return Bundle(root, docs, queries, doc_vecs, query_vecs)


def _namespace(tenant: str) -> dict[str, str]:
    return {"tenant_id": tenant, "product_id": PRODUCT, "env": ENV}


class _Progress:
    """A dependency-free progress line on stderr (only when it is a terminal, or when forced)."""

    def __init__(self, total: int, label: str, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self.total, self.label, self.stream = total, label, stream
        self.enabled = enabled
        self.done = 0
        self._t0 = self._last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.2 or self.done == self.total):
            self._last = now
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            rate = self.done / max(now - self._t0, 1e-9)
            self.stream.write(f"\r{self.label:<8} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.done}/{self.total} {rate:,.0f}/s")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()


@dataclass(slots=True)
class BundleRun:
    """What a run saw, before any label is read."""

    bundle: str
    documents: int
    threshold: float
    doc_tenant: dict[str, str]
    doc_score: dict[str, float]
    """Each document's strongest poison score: at ingest or against any query."""
    doc_features: dict[str, tuple[float, ...]]
    """The feature vector behind each document's strongest score (for fitting the model)."""
    doc_reasons: dict[str, tuple[str, ...]]
    query_kind: dict[str, str]
    query_tenant: dict[str, str]
    guarded: dict[str, list[str]]
    """Per query, the kept ids, best first (``EVAL_DEPTH`` of them)."""
    unguarded: dict[str, list[str]]
    seen_tenants: dict[str, list[str]] = field(default_factory=dict)
    """Per query, the tenant of every hit it returned (kept and quarantined), for the leak count."""
    timings: dict[str, float] = field(default_factory=dict)


BATCH_SIZE = 1000


def _build(bundle: Bundle, config: GuardConfig, model: PoisonModel, progress: _Progress | None) -> GuardedIndex:
    """One index over the bundle, a namespace per tenant, from the bundle's (or run's) vectors."""
    assert bundle.doc_vectors is not None
    index = GuardedIndex(config=config, model=model, policy=TrustPolicy(manifest_required=False))
    by_tenant: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(bundle.docs):
        by_tenant[str(d.get("metadata", {}).get("tenant", ""))].append(i)
    for tenant, rows in by_tenant.items():
        ns = _namespace(tenant)
        for s in range(0, len(rows), BATCH_SIZE):
            chunk = rows[s: s + BATCH_SIZE]
            docs = [(bundle.docs[i]["_id"], bundle.docs[i]["text"]) for i in chunk]
            index.add(docs, namespace=ns, vectors=bundle.doc_vectors[chunk])
            if progress is not None:
                progress.update(len(chunk))
    return index


def _unguarded(config: GuardConfig) -> tuple[GuardConfig, PoisonModel]:
    """The same retrieval with the guard off: no poison weight, nothing ever reaches τ."""
    w = config.weights
    weights = FusionWeights(alpha=w.alpha, beta=w.beta, gamma=w.gamma, delta=0.0)
    off = PoisonModel(weights=(0.0,) * len(FEATURES), bias=-50.0, provenance="guard off")
    return config.model_copy(update={"weights": weights}), off


def run_bundle(
    path: str | Path,
    *,
    config: GuardConfig | None = None,
    model: PoisonModel | None = None,
    embedder: Any = None,
    progress: bool | None = None,
) -> BundleRun:
    """Ingest a bundle into a guarded and an unguarded index and run every query through both.

    Args:
        path: the bundle directory.
        config: the guard's configuration (τ included); the defaults when not given.
        model: the poison model; the shipped one when not given.
        embedder: used when the bundle has no precomputed vectors.
        progress: show progress bars; by default only when stderr is a terminal.
    """
    bundle = load_bundle(path)
    if bundle.doc_vectors is None:
        if embedder is None:
            raise ConfigError("the bundle has no embeddings/: pass an embedder")
        # Embed once: the guarded and the unguarded index share the vectors, as they would the model.
        model_ = as_embedder(embedder)
        bundle.doc_vectors = np.asarray(model_.embed_documents([d["text"] for d in bundle.docs]), dtype=np.float32)
        bundle.query_vectors = np.asarray([model_.embed_query(q["text"]) for q in bundle.queries], dtype=np.float32)
    config = config if config is not None else GuardConfig()
    model = model if model is not None else PoisonModel.default()
    show = sys.stderr.isatty() if progress is None else progress
    t0 = time.perf_counter()
    guarded = _build(bundle, config, model, _Progress(len(bundle.docs), "ingest", show))
    t1 = time.perf_counter()
    off_config, off_model = _unguarded(config)
    plain = _build(bundle, off_config, off_model, None)

    doc_tenant = {d["_id"]: str(d.get("metadata", {}).get("tenant", "")) for d in bundle.docs}
    doc_score: dict[str, float] = {}
    doc_features: dict[str, tuple[float, ...]] = {}
    doc_reasons: dict[str, tuple[str, ...]] = {}
    for partition in (guarded.main, guarded.quarantine):
        for shard in partition.shards.values():
            for doc_id, pos in shard.positions.items():
                row = shard.rows[pos]
                doc_score[doc_id], doc_features[doc_id], doc_reasons[doc_id] = (
                    row.poison, row.features, row.reasons)

    run = BundleRun(
        bundle=str(bundle.path), documents=len(bundle.docs), threshold=config.tau,
        doc_tenant=doc_tenant, doc_score=doc_score, doc_features=doc_features,
        doc_reasons=doc_reasons, query_kind={}, query_tenant={}, guarded={}, unguarded={},
    )
    bar = _Progress(len(bundle.queries), "queries", show)
    t2 = time.perf_counter()
    for qi, q in enumerate(bundle.queries):
        qid, tenant = q["_id"], str(q.get("metadata", {}).get("tenant", ""))
        run.query_kind[qid] = str(q.get("metadata", {}).get("kind", "clean"))
        run.query_tenant[qid] = tenant
        ns = _namespace(tenant)
        qvec = bundle.query_vectors[qi] if bundle.query_vectors is not None else None
        result = guarded.search(q["text"], namespace=ns, k=EVAL_DEPTH, query_vector=qvec)
        run.guarded[qid] = [h.id for h in result.kept]
        # Hits judged against this query (a kept hit's query-time features still inform the fit;
        # a hit withheld at ingest already carries its ingest score).
        for hit in (*result.kept, *(h for h in result.quarantined if h.stage == "query")):
            if hit.poison > doc_score.get(hit.id, 0.0):
                doc_score[hit.id], doc_features[hit.id], doc_reasons[hit.id] = (
                    hit.poison, hit.features, hit.reasons)
        off = plain.search(q["text"], namespace=ns, k=EVAL_DEPTH, query_vector=qvec)
        run.unguarded[qid] = [h.id for h in off.kept]
        run.seen_tenants[qid] = [doc_tenant.get(h.id, "?") for h in
                                 (*result.kept, *result.quarantined, *off.kept)]
        bar.update()
    run.timings = {"ingest_s": t1 - t0, "queries_s": time.perf_counter() - t2}
    return run


# -- scoring: the only place labels are read ---------------------------------------------------


def _read_labels(root: Path) -> dict[str, tuple[str, str, str]]:
    out = {}
    with (root / "labels.tsv").open(encoding="utf-8") as f:
        next(f)
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 4:
                out[parts[0]] = (parts[1], parts[2], parts[3])
    return out


def _read_qrels(root: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    path = root / "qrels.tsv"
    if not path.is_file():
        return out
    with path.open(encoding="utf-8") as f:
        next(f)
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3:
                out[parts[0]][parts[1]] = float(parts[2])
    return out


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (the Mann–Whitney statistic, ties counted half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    # average ranks over ties
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> tuple[float, float]:
    """``(recall, threshold)`` at the lowest threshold whose false-positive rate is ≤ ``fpr``."""
    neg = np.sort(scores[labels == 0])[::-1]
    allowed = math.floor(fpr * len(neg))
    # Flag everything strictly above the (allowed+1)-th highest negative score.
    threshold = float(np.nextafter(neg[allowed], np.inf)) if allowed < len(neg) else float(neg.min())
    recall = float((scores[labels == 1] >= threshold).mean()) if (labels == 1).any() else float("nan")
    return recall, threshold


def _ndcg(ranked: Sequence[str], rels: dict[str, float], depth: int = EVAL_DEPTH) -> float:
    dcg = sum(rels.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranked[:depth]))
    ideal = sorted(rels.values(), reverse=True)[:depth]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def _recall(ranked: Sequence[str], rels: dict[str, float], depth: int = EVAL_DEPTH) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant.intersection(ranked[:depth])) / len(relevant) if relevant else 0.0


def _scored(run: BundleRun, labels: dict[str, tuple[str, str, str]]
            ) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """``(ids, label kinds, scores, is_poison)`` of every document, in id order."""
    ids = sorted(run.doc_tenant)
    kind = [labels.get(d, ("clean", "-", "-"))[0] for d in ids]
    scores = np.array([run.doc_score.get(d, 0.0) for d in ids])
    return ids, kind, scores, np.array([k == "poison" for k in kind], dtype=np.int8)


def score_run(run: BundleRun) -> dict[str, Any]:
    """Score a run against the bundle's ``labels.tsv`` and ``qrels.tsv``: the report dict."""
    root = Path(run.bundle)
    labels = _read_labels(root)
    qrels = _read_qrels(root)
    ids, kind, scores, y = _scored(run, labels)
    flagged = scores >= run.threshold
    clean = np.array([k == "clean" for k in kind])
    hard = np.array([k == "benign_hard" for k in kind])

    def rate(mask: np.ndarray) -> float:
        return float(flagged[mask].mean()) if mask.any() else 0.0

    per_attack: dict[str, dict[str, float | int]] = {}
    for attack in sorted({labels[d][1] for d in ids if d in labels and labels[d][0] == "poison"}):
        mask = np.array([labels.get(d, ("", "", ""))[1] == attack and k == "poison"
                         for d, k in zip(ids, kind, strict=True)])
        per_attack[attack] = {"n": int(mask.sum()), "recall": rate(mask)}
    r1, t1 = recall_at_fpr(scores, y, 0.01)
    r2, _ = recall_at_fpr(scores, y, 0.02)

    targets: dict[str, set[str]] = defaultdict(set)
    for d, (label, _, target) in labels.items():
        if label == "poison" and target not in ("", "-"):
            targets[target].add(d)
    target_queries = [q for q, k in run.query_kind.items() if k == "target"]

    def asr(results: dict[str, list[str]]) -> float:
        if not target_queries:
            return 0.0
        hit = sum(bool(targets[q].intersection(results[q][:ASR_DEPTH])) for q in target_queries)
        return hit / len(target_queries)

    judged = [q for q, k in run.query_kind.items() if k == "clean" and q in qrels]

    def mean(values: Iterable[float]) -> float:
        v = list(values)
        return float(np.mean(v)) if v else 0.0

    leaks = sum(t != run.query_tenant[q] for q, seen in run.seen_tenants.items() for t in seen)
    reasons: dict[str, int] = defaultdict(int)
    for d in ids:
        if run.doc_score.get(d, 0.0) >= run.threshold:
            for r in run.doc_reasons.get(d, ()):
                reasons[r] += 1
    return {
        "bundle": root.name,
        "documents": run.documents,
        "poison": int(y.sum()),
        "benign_hard": int(hard.sum()),
        "queries": len(run.query_kind),
        "threshold": run.threshold,
        "at_threshold": {"recall": rate(y == 1), "fpr": rate(y == 0), "fpr_clean": rate(clean),
                         "fpr_benign_hard": rate(hard)},
        "roc": {"auc": roc_auc(scores, y), "recall_at_fpr_1pct": r1, "recall_at_fpr_2pct": r2,
                "threshold_at_fpr_1pct": t1},
        "per_attack": per_attack,
        "asr": {"unguarded": asr(run.unguarded), "guarded": asr(run.guarded)},
        "ndcg10": {"unguarded": mean(_ndcg(run.unguarded[q], qrels[q]) for q in judged),
                   "guarded": mean(_ndcg(run.guarded[q], qrels[q]) for q in judged)},
        "recall10": {"unguarded": mean(_recall(run.unguarded[q], qrels[q]) for q in judged),
                     "guarded": mean(_recall(run.guarded[q], qrels[q]) for q in judged)},
        "tenant_leaks": int(leaks),
        "reasons_fired": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "timings": {k: round(v, 3) for k, v in run.timings.items()},
    }


def run_redteam(path: str | Path, **kwargs: Any) -> dict[str, Any]:
    """:func:`run_bundle` then :func:`score_run`: the whole harness as one call."""
    return score_run(run_bundle(path, **kwargs))


def roc_curve(run: BundleRun) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` points of the document-level ROC, for plotting."""
    _, _, scores, poison = _scored(run, _read_labels(Path(run.bundle)))
    y = poison.astype(bool)
    thresholds = np.unique(scores)[::-1]
    fpr = np.array([0.0, *[(scores[~y] >= t).mean() for t in thresholds], 1.0])
    tpr = np.array([0.0, *[(scores[y] >= t).mean() for t in thresholds], 1.0])
    return fpr, tpr


def plot_run(run: BundleRun, report: dict[str, Any], path: str | Path) -> None:
    """Save the document-level ROC and the per-attack recall at τ as one PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the dev extra
        raise MissingExtraError("dev", "matplotlib") from None
    fpr, tpr = roc_curve(run)
    fig, (roc, bars) = plt.subplots(1, 2, figsize=(10, 4))
    roc.plot(fpr, tpr, drawstyle="steps-post")
    roc.axvline(0.01, color="grey", linestyle=":", label="FPR 1%")
    at = report["at_threshold"]
    roc.scatter([at["fpr"]], [at["recall"]], color="red", zorder=3, label=f"τ = {report['threshold']}")
    roc.set_xscale("symlog", linthresh=1e-3)
    roc.set(xlabel="false-positive rate", ylabel="recall", title=f"ROC (AUC {report['roc']['auc']:.3f})")
    roc.legend(loc="lower right")
    attacks = report["per_attack"]
    bars.barh(list(attacks), [a["recall"] for a in attacks.values()])
    bars.set(xlim=(0, 1), xlabel="recall at τ", title="per attack")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
