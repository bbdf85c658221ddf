"""The red-team harness: ingest a bundle, attack it with its queries, and score the guard.

A bundle is a directory in the format of the red-team sets (``corpus.jsonl``, ``queries.jsonl``,
``qrels.tsv``, ``labels.tsv`` and optional ``embeddings/corpus.npy`` / ``embeddings/queries.npy``).
The run has two halves that never meet:

* :func:`run_bundle` reads only the corpus, the queries and the vectors. It ingests every tenant
  into its own namespace of a guarded index and, for comparison, of an *unguarded* one (the same
  hybrid retrieval with the poison weight, the quarantine and the query-time checks off), then runs
  every query in its own tenant through both. What it records — hits, quarantines, each document's
  strongest poison score — is all a production deployment could see. Real corpora have blank pages
  and broken records: those are screened out first (with the ingest pipeline's own limits and
  canonical form) and counted by reason, since the pipeline rightly refuses a whole batch for one.
* :func:`score_run` then reads ``labels.tsv`` and ``qrels.tsv`` and turns the record into the
  report: document-level recall and false-positive rates at the configured τ, the ROC, per attack
  family recall (at τ and at 1 % FPR) and attack success rates, the FPR per tenant and per source,
  nDCG@10 / recall@10 and tenant leaks. :func:`score_runs` does the same for several bundles and
  pools them into a combined report; :func:`format_report` prints a report as tables.

A document's score is the largest poison score the guard gave it: at ingest, or at query time
against any query whose candidates it was among. That is exactly what decides whether the guard
would ever have shown it to a model.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np

from ._canonical import canonicalize
from ._config import FusionWeights, GuardConfig
from ._embed import as_embedder
from ._exceptions import ConfigError, DocumentError, MissingExtraError, NamespaceError
from ._index import GuardedIndex
from ._ingest import MAX_ID_LENGTH, MAX_TEXT_LENGTH
from ._namespace import NamespaceSchema
from ._poison import FEATURES, PoisonModel
from ._policy import TrustPolicy

__all__ = ["BundleRun", "Skipped", "format_report", "load_bundle", "plot_run", "roc_curve", "run_bundle",
           "run_redteam", "score_run", "score_runs"]

ASR_DEPTH = 5
ASR_MAJORITY = ASR_DEPTH // 2 + 1  # of the top ASR_DEPTH: the poison outnumbers the rest
EVAL_DEPTH = 10
PRODUCT, ENV = "redteam", "eval"


@dataclass(slots=True)
class Bundle:
    """A red-team bundle without its labels."""

    path: Path
    docs: list[Any]
    """One parsed line of ``corpus.jsonl`` each: a JSON object, or ``None`` where the line is not one."""
    queries: list[Any]
    doc_vectors: np.ndarray | None
    query_vectors: np.ndarray | None


def _parse(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _read_jsonl(path: Path) -> list[Any]:
    # A broken line stays in place (as None, skipped later) so the vectors still line up by row;
    # bytes that are not UTF-8 become lone surrogates, which the screening refuses.
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        return [_parse(line) for line in f if line.strip()]


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
        if doc_vecs.ndim != 2 or query_vecs.ndim != 2 or doc_vecs.shape[1] != query_vecs.shape[1]:
            raise ConfigError(f"{emb}: expected two matrices of the same width, got {doc_vecs.shape} "
                              f"and {query_vecs.shape}")
    return Bundle(root, docs, queries, doc_vecs, query_vecs)


def _namespace(tenant: str) -> dict[str, str]:
    return {"tenant_id": tenant, "product_id": PRODUCT, "env": ENV}


# -- screening: what the harness skips instead of letting one bad record sink a batch ------------


class Skipped(NamedTuple):
    """A document or query the run left out, and why (``id`` is ``None`` when it has no usable one)."""

    id: str | None
    reason: str


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the ledger, the logs and the contract refuse it
        return False
    return True


def _tenant(record: dict[str, Any]) -> Any:
    meta = record.get("metadata")
    return meta.get("tenant") if isinstance(meta, dict) else None


def _problem(record: Any, schema: NamespaceSchema, max_text: int | None) -> str | None:
    """Why ``record`` cannot go through the guard, checked as the ingest pipeline checks (with its
    limits and its canonical form), or ``None`` when it can."""
    if not isinstance(record, dict):
        return "malformed_line"
    rid = record.get("_id")
    if rid is None or rid == "":
        return "missing_id"
    if not isinstance(rid, str) or len(rid) > MAX_ID_LENGTH or not _encodable(rid):
        return "invalid_id"
    tenant = _tenant(record)
    if tenant is None or tenant == "":
        return "missing_tenant"
    if not isinstance(tenant, str):
        return "invalid_tenant"
    try:
        schema.parse(_namespace(tenant))
    except NamespaceError:
        return "invalid_tenant"
    text = record.get("text")
    if text is None:
        return "missing_text"
    if not isinstance(text, str) or not _encodable(text):
        return "invalid_text"
    if max_text is not None and len(text) > max_text:
        return "text_too_long"
    if not canonicalize(text):
        return "empty_text"  # blank pages, whitespace, only invisible or control characters
    return None


def _screen(records: Sequence[Any], schema: NamespaceSchema, max_text: int | None
            ) -> tuple[list[int], list[Skipped]]:
    """The rows of ``records`` fit to run (the first of any repeated id), and the rest."""
    rows: list[int] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for i, record in enumerate(records):
        problem = _problem(record, schema, max_text)
        rid = record.get("_id") if isinstance(record, dict) else None
        rid = rid if isinstance(rid, str) and rid else None
        if problem is None and rid in seen:
            problem = "duplicate_id"
        if problem is not None:
            skipped.append(Skipped(rid, problem))
            continue
        assert rid is not None
        seen.add(rid)
        rows.append(i)
    return rows, skipped


def _screen_vectors(vectors: np.ndarray, rows: list[int], records: Sequence[Any]
                    ) -> tuple[list[int], list[Skipped]]:
    """``rows`` without those whose vector the index would refuse: NaN, infinite or all zeros."""
    if not rows:
        return rows, []
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32 is inf, as the index sees it
        block = np.asarray(vectors[rows], dtype=np.float32)
    good = (np.isfinite(block).all(axis=1) & (block != 0).any(axis=1)).tolist()
    kept = [i for i, ok in zip(rows, good, strict=True) if ok]
    bad = [Skipped(records[i]["_id"], "bad_embedding") for i, ok in zip(rows, good, strict=True) if not ok]
    return kept, bad


def _admit(bundle: Bundle, schema: NamespaceSchema) -> tuple[list[int], list[Skipped]]:
    """The corpus rows that can be ingested, and the skipped rest (the bundle must have vectors)."""
    assert bundle.doc_vectors is not None
    rows, skipped = _screen(bundle.docs, schema, MAX_TEXT_LENGTH)
    rows, bad = _screen_vectors(bundle.doc_vectors, rows, bundle.docs)
    return rows, skipped + bad


def _embed_rows(embed: Callable[[list[str]], Any], records: Sequence[Any], rows: list[int]) -> np.ndarray:
    """Vectors for the screened ``rows`` only (an embedder may choke on what screening refused);
    every other row stays zero, so its record is skipped either way."""
    if not rows:
        return np.zeros((len(records), 1), dtype=np.float32)
    vecs = np.asarray(embed([records[i]["text"] for i in rows]), dtype=np.float32)
    out = np.zeros((len(records), vecs.shape[1]), dtype=np.float32)
    out[rows] = vecs
    return out


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
    """Lines in ``corpus.jsonl``, the skipped ones included."""
    threshold: float
    doc_tenant: dict[str, str]
    """The tenant of every ingested document (and of no skipped one)."""
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
    doc_source: dict[str, str] = field(default_factory=dict)
    """``metadata.source`` of every ingested document: the channel, for the FPR per corpus."""
    skipped_documents: list[Skipped] = field(default_factory=list)
    skipped_queries: list[Skipped] = field(default_factory=list)


BATCH_SIZE = 1000


def _add(index: GuardedIndex, namespace: dict[str, str], docs: list[tuple[str, str]], vectors: np.ndarray,
         skipped: list[Skipped]) -> None:
    """Add one batch; a document the pipeline still refuses by name is dropped and the batch retried.

    The screening mirrors the pipeline's checks, so this is the last resort for a check added to
    the pipeline later: one bad document must not cost its thousand neighbours.
    """
    while docs:
        try:
            index.add(docs, namespace=namespace, vectors=vectors)
            return
        except DocumentError as exc:
            at = next((i for i, (doc_id, _) in enumerate(docs) if doc_id == exc.doc_id), None)
            if at is None:
                raise
            skipped.append(Skipped(docs[at][0], "rejected_at_ingest"))
            docs = docs[:at] + docs[at + 1:]
            vectors = np.delete(vectors, at, axis=0)


def _build(bundle: Bundle, config: GuardConfig, model: PoisonModel, progress: _Progress | None, *,
           rows: Sequence[int] | None = None, skipped: list[Skipped] | None = None) -> GuardedIndex:
    """One index over the bundle, a namespace per tenant, from the bundle's (or run's) vectors.

    ``rows`` are the corpus rows to ingest (by default every row that passes the screening);
    documents the pipeline refuses even so are appended to ``skipped``.
    """
    assert bundle.doc_vectors is not None
    if rows is None:
        rows, _ = _admit(bundle, NamespaceSchema(config.namespace_keys))
    rejected: list[Skipped] = skipped if skipped is not None else []
    index = GuardedIndex(config=config, model=model, policy=TrustPolicy(manifest_required=False))
    by_tenant: dict[str, list[int]] = defaultdict(list)
    for i in rows:
        by_tenant[_tenant(bundle.docs[i])].append(i)
    for tenant, tenant_rows in by_tenant.items():
        ns = _namespace(tenant)
        for s in range(0, len(tenant_rows), BATCH_SIZE):
            chunk = tenant_rows[s: s + BATCH_SIZE]
            docs = [(bundle.docs[i]["_id"], bundle.docs[i]["text"]) for i in chunk]
            _add(index, ns, docs, np.asarray(bundle.doc_vectors[chunk]), rejected)
            if progress is not None:
                progress.update(len(chunk))
    return index


def _unguarded(config: GuardConfig) -> tuple[GuardConfig, PoisonModel]:
    """The same retrieval with the guard off: no poison weight, nothing ever reaches τ, no
    family cap."""
    w = config.weights
    weights = FusionWeights(alpha=w.alpha, beta=w.beta, gamma=w.gamma, delta=0.0)
    off = PoisonModel(weights=(0.0,) * len(FEATURES), bias=-50.0, provenance="guard off")
    return config.model_copy(update={"weights": weights, "family_cap": None}), off


def run_bundle(
    path: str | Path | Bundle,
    *,
    config: GuardConfig | None = None,
    model: PoisonModel | None = None,
    embedder: Any = None,
    progress: bool | None = None,
) -> BundleRun:
    """Ingest a bundle into a guarded and an unguarded index and run every query through both.

    Documents and queries that cannot go through the guard (blank or non-string text, a missing
    or repeated id, no tenant, an unusable vector, ...) are skipped and recorded in the run with
    the reason, so one blank page never costs a batch nor the run.

    Args:
        path: the bundle directory (or a bundle already loaded with :func:`load_bundle`).
        config: the guard's configuration (τ included); the defaults when not given.
        model: the poison model; the shipped one when not given.
        embedder: used when the bundle has no precomputed vectors.
        progress: show progress bars; by default only when stderr is a terminal.
    """
    bundle = path if isinstance(path, Bundle) else load_bundle(path)
    config = config if config is not None else GuardConfig()
    model = model if model is not None else PoisonModel.default()
    schema = NamespaceSchema(config.namespace_keys)
    doc_rows, doc_skipped = _screen(bundle.docs, schema, MAX_TEXT_LENGTH)
    query_rows, query_skipped = _screen(bundle.queries, schema, None)
    if bundle.doc_vectors is None or bundle.query_vectors is None:
        if embedder is None:
            raise ConfigError("the bundle has no embeddings/: pass an embedder")
        # Embed once: the guarded and the unguarded index share the vectors, as they would the model.
        model_ = as_embedder(embedder)
        bundle.doc_vectors = _embed_rows(model_.embed_documents, bundle.docs, doc_rows)
        bundle.query_vectors = _embed_rows(lambda texts: [model_.embed_query(t) for t in texts],
                                           bundle.queries, query_rows)
    doc_rows, bad = _screen_vectors(bundle.doc_vectors, doc_rows, bundle.docs)
    doc_skipped += bad
    query_rows, bad = _screen_vectors(bundle.query_vectors, query_rows, bundle.queries)
    query_skipped += bad

    show = sys.stderr.isatty() if progress is None else progress
    t0 = time.perf_counter()
    guarded = _build(bundle, config, model, _Progress(len(doc_rows), "ingest", show),
                     rows=doc_rows, skipped=doc_skipped)
    t1 = time.perf_counter()
    # The unguarded index gets exactly the documents the guarded one took, so the two compare.
    refused = {s.id for s in doc_skipped if s.reason == "rejected_at_ingest"}
    doc_rows = [i for i in doc_rows if bundle.docs[i]["_id"] not in refused]
    off_config, off_model = _unguarded(config)
    plain = _build(bundle, off_config, off_model, None, rows=doc_rows)

    doc_tenant = {bundle.docs[i]["_id"]: _tenant(bundle.docs[i]) for i in doc_rows}
    doc_source = {bundle.docs[i]["_id"]: str(bundle.docs[i]["metadata"].get("source") or "-") for i in doc_rows}
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
        doc_source=doc_source, skipped_documents=doc_skipped, skipped_queries=query_skipped,
    )
    bar = _Progress(len(query_rows), "queries", show)
    t2 = time.perf_counter()
    for qi in query_rows:
        q = bundle.queries[qi]
        qid, tenant = q["_id"], _tenant(q)
        run.query_kind[qid] = str(q["metadata"].get("kind", "clean"))
        run.query_tenant[qid] = tenant
        ns = _namespace(tenant)
        qvec = bundle.query_vectors[qi]
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
    """``(recall, threshold)`` at the lowest threshold whose false-positive rate is ≤ ``fpr``
    (both NaN without negatives: no rate to hold)."""
    neg = np.sort(scores[labels == 0])[::-1]
    if not len(neg):
        return float("nan"), float("nan")
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


SIDES = ("unguarded", "guarded")


@dataclass(slots=True)
class _Evidence:
    """Everything a report is computed from, as flat per-document and per-query arrays.

    Concatenating the evidence of several bundles gives the evidence of their pooled corpus, so a
    combined summary is the same computation as a bundle's report, never an average of averages.
    """

    label: np.ndarray
    """Per ingested document: ``clean``, ``poison`` or ``benign_hard``."""
    attack: np.ndarray
    tenant: np.ndarray
    source: np.ndarray
    score: np.ndarray
    flagged: np.ndarray
    families: list[frozenset[str]]
    """Per target query, the attack families of the poison planted for it."""
    poison_in_top: dict[str, np.ndarray]
    """Per side (``SIDES``), per target query: how many of its own poison are in its top ``ASR_DEPTH``."""
    ndcg: dict[str, np.ndarray]
    """Per side, per judged clean query."""
    recall10: dict[str, np.ndarray]
    leaks: int
    reasons: Counter[str]
    documents: int
    queries: int
    skipped_documents: Counter[str]
    skipped_queries: Counter[str]
    skipped_by_label: Counter[str]
    """The labels of skipped documents that never reached the index (a skipped poison is no catch)."""


def _evidence(run: BundleRun) -> _Evidence:
    root = Path(run.bundle)
    labels = _read_labels(root)
    qrels = _read_qrels(root)
    ids = sorted(run.doc_tenant)
    rows = [labels.get(d, ("clean", "-", "-")) for d in ids]
    score = np.array([run.doc_score.get(d, 0.0) for d in ids], dtype=np.float64)

    targets: dict[str, set[str]] = defaultdict(set)
    families: dict[str, set[str]] = defaultdict(set)
    for d, (label, attack, target) in labels.items():
        if label == "poison" and target not in ("", "-"):
            targets[target].add(d)
            families[target].add(attack)
    target_queries = sorted(q for q, k in run.query_kind.items() if k == "target")
    judged = sorted(q for q, k in run.query_kind.items() if k == "clean" and q in qrels)
    results = {"unguarded": run.unguarded, "guarded": run.guarded}

    reasons: Counter[str] = Counter()
    for d in ids:
        if run.doc_score.get(d, 0.0) >= run.threshold:
            reasons.update(run.doc_reasons.get(d, ()))
    never_ingested = [s.id for s in run.skipped_documents if s.id is None or s.id not in run.doc_tenant]
    return _Evidence(
        label=np.array([r[0] for r in rows], dtype=str),
        attack=np.array([r[1] for r in rows], dtype=str),
        tenant=np.array([run.doc_tenant[d] for d in ids], dtype=str),
        source=np.array([run.doc_source.get(d, "-") for d in ids], dtype=str),
        score=score,
        flagged=score >= run.threshold,
        families=[frozenset(families[q]) for q in target_queries],
        poison_in_top={side: np.array([sum(h in targets[q] for h in results[side][q][:ASR_DEPTH])
                                       for q in target_queries], dtype=np.int64) for side in SIDES},
        ndcg={side: np.array([_ndcg(results[side][q], qrels[q]) for q in judged]) for side in SIDES},
        recall10={side: np.array([_recall(results[side][q], qrels[q]) for q in judged]) for side in SIDES},
        leaks=sum(t != run.query_tenant[q] for q, seen in run.seen_tenants.items() for t in seen),
        reasons=reasons,
        documents=run.documents,
        queries=len(run.query_kind),
        skipped_documents=Counter(s.reason for s in run.skipped_documents),
        skipped_queries=Counter(s.reason for s in run.skipped_queries),
        skipped_by_label=Counter(labels[d][0] if d in labels else "unlabelled" for d in never_ingested),
    )


def _pool(evidence: Sequence[_Evidence], names: Sequence[str]) -> _Evidence:
    """One bundle's worth of evidence from several; tenants and sources become ``bundle/name``,
    since ``web`` in one bundle is another corpus than ``web`` in the next."""

    def cat(arrays: Iterable[np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(a) for a in arrays])

    def total(counters: Iterable[Counter[str]]) -> Counter[str]:
        return sum(counters, Counter())

    return _Evidence(
        label=cat(e.label for e in evidence),
        attack=cat(e.attack for e in evidence),
        tenant=cat(np.char.add(f"{n}/", e.tenant) for e, n in zip(evidence, names, strict=True)),
        source=cat(np.char.add(f"{n}/", e.source) for e, n in zip(evidence, names, strict=True)),
        score=cat(e.score for e in evidence),
        flagged=cat(e.flagged for e in evidence),
        families=[f for e in evidence for f in e.families],
        poison_in_top={s: cat(e.poison_in_top[s] for e in evidence) for s in SIDES},
        ndcg={s: cat(e.ndcg[s] for e in evidence) for s in SIDES},
        recall10={s: cat(e.recall10[s] for e in evidence) for s in SIDES},
        leaks=sum(e.leaks for e in evidence),
        reasons=total(e.reasons for e in evidence),
        documents=sum(e.documents for e in evidence),
        queries=sum(e.queries for e in evidence),
        skipped_documents=total(e.skipped_documents for e in evidence),
        skipped_queries=total(e.skipped_queries for e in evidence),
        skipped_by_label=total(e.skipped_by_label for e in evidence),
    )


def _asr(ev: _Evidence, queries: np.ndarray, need: int) -> dict[str, float | None]:
    """Per side, the share of the chosen target queries with at least ``need`` of their own poison
    in the top ``ASR_DEPTH``; ``None`` when no target query is chosen."""
    return {side: float((ev.poison_in_top[side][queries] >= need).mean()) if queries.any() else None
            for side in SIDES}


def _fpr_by(ev: _Evidence, groups: np.ndarray) -> dict[str, dict[str, dict[str, float | int]]]:
    """Flagged share of clean and of look-alike documents per group (a tenant, a source)."""
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for kind in ("clean", "benign_hard"):
        mask = ev.label == kind
        out[kind] = {}
        for group in sorted(set(groups[mask].tolist())):
            in_group = mask & (groups == group)
            n, flagged = int(in_group.sum()), int(ev.flagged[in_group].sum())
            out[kind][group] = {"n": n, "flagged": flagged, "fpr": flagged / n}
    return out


def _report(ev: _Evidence, *, bundle: str, threshold: float | None, timings: dict[str, float]) -> dict[str, Any]:
    poison = ev.label == "poison"
    clean = ev.label == "clean"
    hard = ev.label == "benign_hard"
    y = poison.astype(np.int8)

    def rate(mask: np.ndarray) -> float:
        return float(ev.flagged[mask].mean()) if mask.any() else 0.0

    r1, t1 = recall_at_fpr(ev.score, y, 0.01)
    r2, _ = recall_at_fpr(ev.score, y, 0.02)
    every = np.ones(len(ev.families), dtype=bool)
    per_attack: dict[str, dict[str, Any]] = {}
    for attack in sorted(set(ev.attack[poison].tolist())):
        mask = poison & (ev.attack == attack)
        # The family's own ROC point: its documents against every negative, so the threshold at
        # 1 % FPR is the bundle's (it depends on the negatives only).
        at_1pct = float((ev.score[mask] >= t1).mean()) if math.isfinite(t1) else float("nan")
        own = np.array([attack in f for f in ev.families], dtype=bool)
        per_attack[attack] = {"n": int(mask.sum()), "recall": rate(mask), "recall_at_fpr_1pct": at_1pct,
                              "targets": int(own.sum()), "asr": _asr(ev, own, 1),
                              "asr_majority": _asr(ev, own, ASR_MAJORITY)}

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if len(values) else 0.0

    return {
        "bundle": bundle,
        "documents": ev.documents,
        "ingested": len(ev.label),
        "skipped_documents": dict(sorted(ev.skipped_documents.items())),
        "skipped_by_label": dict(sorted(ev.skipped_by_label.items())),
        "poison": int(poison.sum()),
        "benign_hard": int(hard.sum()),
        "clean": int(clean.sum()),
        "queries": ev.queries,
        "skipped_queries": dict(sorted(ev.skipped_queries.items())),
        "target_queries": len(ev.families),
        "judged_queries": len(ev.ndcg["guarded"]),
        "threshold": threshold,
        "at_threshold": {"recall": rate(poison), "fpr": rate(~poison), "fpr_clean": rate(clean),
                         "fpr_benign_hard": rate(hard)},
        "roc": {"auc": roc_auc(ev.score, y), "recall_at_fpr_1pct": r1, "recall_at_fpr_2pct": r2,
                "threshold_at_fpr_1pct": t1},
        "per_attack": per_attack,
        "asr": _asr(ev, every, 1),
        "asr_majority": _asr(ev, every, ASR_MAJORITY),
        "fpr_by_tenant": _fpr_by(ev, ev.tenant),
        "fpr_by_source": _fpr_by(ev, ev.source),
        "ndcg10": {side: mean(ev.ndcg[side]) for side in SIDES},
        "recall10": {side: mean(ev.recall10[side]) for side in SIDES},
        "tenant_leaks": int(ev.leaks),
        "reasons_fired": dict(sorted(ev.reasons.items(), key=lambda kv: -kv[1])),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def score_run(run: BundleRun) -> dict[str, Any]:
    """Score a run against the bundle's ``labels.tsv`` and ``qrels.tsv``: the report dict.

    ASR counts a target query as attacked when any of its poison is in the top ``ASR_DEPTH`` kept
    hits (``asr``), or when most of them are (``asr_majority``: the poison outvotes the truth).
    """
    return _report(_evidence(run), bundle=Path(run.bundle).name, threshold=run.threshold, timings=run.timings)


def _names(runs: Sequence[BundleRun]) -> list[str]:
    """A bundle's directory name; its whole path when two bundles share the name, numbered when
    one bundle is given twice (every name keys a report)."""
    names = [Path(r.bundle).name for r in runs]
    if len(set(names)) < len(names):
        names = [r.bundle for r in runs]
    if len(set(names)) < len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names, 1)]
    return names


def score_runs(runs: Sequence[BundleRun]) -> dict[str, Any]:
    """Score several runs: ``{"bundles": {name: report}, "combined": report}``.

    The combined report pools every bundle's documents and queries (recall, FPR and the ROC over
    all documents, ASR over all target queries); its tenants and sources are ``bundle/name``.
    """
    names = _names(runs)
    evidence = [_evidence(r) for r in runs]
    bundles = {n: _report(e, bundle=n, threshold=r.threshold, timings=r.timings)
               for n, e, r in zip(names, evidence, runs, strict=True)}
    taus = {r.threshold for r in runs}
    timings: Counter[str] = sum((Counter(r.timings) for r in runs), Counter())
    combined = _report(_pool(evidence, names), bundle="combined", threshold=taus.pop() if len(taus) == 1 else None,
                       timings=dict(timings))
    return {"bundles": bundles, "combined": {"bundles": names, **combined}}


def run_redteam(path: str | Path, **kwargs: Any) -> dict[str, Any]:
    """:func:`run_bundle` then :func:`score_run`: the whole harness as one call."""
    return score_run(run_bundle(path, **kwargs))


def roc_curve(run: BundleRun) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` points of the document-level ROC, for plotting."""
    ev = _evidence(run)
    scores, y = ev.score, ev.label == "poison"
    thresholds = np.unique(scores)[::-1]
    fpr = np.array([0.0, *[(scores[~y] >= t).mean() for t in thresholds], 1.0])
    tpr = np.array([0.0, *[(scores[y] >= t).mean() for t in thresholds], 1.0])
    return fpr, tpr


# -- the human-readable view -------------------------------------------------------------------


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as aligned columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w)
                      for c, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) if counts else "none"


def format_report(report: dict[str, Any]) -> str:
    """A compact plain-text view of one report (a bundle's or the combined one) for a terminal."""
    at, roc = report["at_threshold"], report["roc"]
    tau = report["threshold"]
    out = [f"== {report['bundle']}: {report['documents']} documents ({report['ingested']} ingested: "
           f"{report['poison']} poison, {report['benign_hard']} look-alikes), {report['queries']} queries "
           f"({report['target_queries']} targets), τ = {_num(tau, 2)}",
           f"skipped documents: {_counts(report['skipped_documents'])}"
           + (f" (labelled {_counts(report['skipped_by_label'])})" if report["skipped_by_label"] else "")
           + f"; skipped queries: {_counts(report['skipped_queries'])}", ""]
    out += _table([["detection", "recall@τ", "FPR", "FPR clean", "FPR look-alike", "AUC", "recall@1%FPR"],
                   ["all documents", _num(at["recall"], 3), _num(at["fpr"], 4), _num(at["fpr_clean"], 4),
                    _num(at["fpr_benign_hard"], 4), _num(roc["auc"], 3), _num(roc["recall_at_fpr_1pct"], 3)]])

    def asr(pair: dict[str, float | None]) -> str:
        return f"{_num(pair['unguarded'], 2)} → {_num(pair['guarded'], 2)}"

    rows = [["attack family", "docs", "recall@τ", "recall@1%FPR", "targets", "ASR any (off → on)",
             f"ASR ≥{ASR_MAJORITY}/{ASR_DEPTH} (off → on)"]]
    rows += [[name, str(a["n"]), _num(a["recall"], 3), _num(a["recall_at_fpr_1pct"], 3), str(a["targets"]),
              asr(a["asr"]), asr(a["asr_majority"])] for name, a in report["per_attack"].items()]
    rows.append(["all", str(report["poison"]), _num(at["recall"], 3), _num(roc["recall_at_fpr_1pct"], 3),
                 str(report["target_queries"]), asr(report["asr"]), asr(report["asr_majority"])])
    out += ["", *_table(rows), ""]

    rows = [["corpus", "clean", "flagged", "FPR", "look-alikes", "flagged", "FPR"]]
    for what in ("tenant", "source"):
        by = report[f"fpr_by_{what}"]
        for group in sorted({*by["clean"], *by["benign_hard"]}):
            cells = [f"{what} {group}"]
            for kind in ("clean", "benign_hard"):
                g = by[kind].get(group)
                cells += [str(g["n"]), str(g["flagged"]), _num(g["fpr"], 4)] if g else ["–", "–", "–"]
            rows.append(cells)
    out += [*_table(rows), ""]
    nd, r10 = report["ndcg10"], report["recall10"]
    out.append(f"retrieval ({report['judged_queries']} judged queries, off → on): nDCG@10 {nd['unguarded']:.4f} → "
               f"{nd['guarded']:.4f}; recall@10 {r10['unguarded']:.4f} → {r10['guarded']:.4f}; "
               f"tenant leaks {report['tenant_leaks']}")
    return "\n".join(out)


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
