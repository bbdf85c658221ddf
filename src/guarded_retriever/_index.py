"""``GuardedIndex``: the framework-free core that ingests through the guard and searches guarded.

Search, step by step (``search``):

1. parse the namespace (fail closed) and pick its shard: BM25 and FAISS only ever see that
   namespace's rows;
2. BM25 top-``candidates`` and dense top-``candidates``; every candidate then gets its exact score
   from the other signal too (a BM25 look-up, or one dot product), so fusion never guesses;
3. fuse (linear with per-query normalisation, or weighted RRF), deduped by the stable document id;
4. the query-time guard scores the best ``k + guard_pool`` candidates again with the query-time
   features (echo, paraphrase cluster); a candidate at or above τ goes to ``quarantined``;
5. every hit's namespace is asserted before it leaves; a foreign hit is dropped, counted and logged
   (or raises :class:`NamespaceViolation` in strict mode);
6. the quarantine partition is searched the same way, and the documents withheld at ingest that
   would have made the top-k are listed under ``quarantined`` too.

Per-query glue stays in dicts, tuples and small numpy arrays: no pydantic model and no framework
object is built on the hot path.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from ._canonical import canonicalize, tokenize
from ._config import GuardConfig
from ._contract import delta_s, lambda_state, next_fix, validate_contract
from ._dense import check_query_vector, check_vectors
from ._embed import Embedder, as_embedder
from ._exceptions import (
    ConfigError,
    DocumentError,
    EmbeddingError,
    NamespaceFrozenError,
    NamespaceViolation,
    QueryError,
)
from ._fingerprint import content_hash
from ._fusion import linear_fusion_arrays, weighted_rrf
from ._incident import RevocationReport, VerifyReport
from ._ingest import GuardDocument, IngestPipeline, Judge, PreparedBatch
from ._ledger import Ledger
from ._manifest import IngestManifest, ManifestSigner, SignedManifest
from ._namespace import Namespace
from ._neighbourhood import RowUpdate, batch_contrast, neighbour_updates, replaced
from ._poison import FEATURES, PoisonModel, document_features
from ._policy import TrustPolicy, source_domain
from ._query_guard import EchoScorer, FamilyCap, paraphrase_cluster
from ._rwlock import RWLock
from ._store import Partition, Row, Shard
from .detect.contrast import ContrastDetector

__all__ = ["DenseSearch", "GuardedIndex", "Hit", "IngestReport", "SearchResult"]

logger = logging.getLogger("guarded_retriever")

_ECHO = FEATURES.index("query_echo")
_CLUSTER = FEATURES.index("paraphrase_cluster")
_CONTRAST = FEATURES.index("cluster_contrast")
_INJECTION = FEATURES.index("injection")
MAX_K = 1000
R = TypeVar("R")

DenseSearch = Callable[[np.ndarray, int], Iterable[str]]
"""An external dense retriever for :meth:`GuardedIndex.search`: given the query vector and ``n``
(``max(config.candidates, k)``), the ids of up to ``n`` nearest documents, best first. It only
*nominates* candidates: ids the index does not hold in the request's namespace are ignored, and
every score is recomputed from the index's own vectors, so a store that cannot pre-filter by
namespace can never leak through it."""


@dataclass(slots=True)
class Hit:
    """One search hit with every signal that placed it, and the reasons the guard gave."""

    id: str
    text: str
    metadata: Mapping[str, Any]
    namespace: str
    content_hash: str
    source_url: str | None
    manifest_id: str | None
    bm25: float
    dense: float
    provenance: float
    poison: float
    fused: float
    """``α·bm25 + β·dense + γ·provenance − δ·poison_at_ingest`` (normalised per query), or the RRF
    score. ``poison`` may be higher than the ingest score: query-time evidence can raise it up to
    quarantine, but does not re-rank what it keeps."""
    reasons: tuple[str, ...]
    stage: str | None = None
    """For quarantined hits: ``ingest`` or ``query``, where the guard withheld it."""
    features: tuple[float, ...] = ()
    """The poison feature strengths behind ``poison``, in :data:`FEATURES` order."""
    held: bool = True
    """Whether the hit is the index's own record (always, from a search). From :meth:`GuardedIndex.screen`,
    ``False`` for a document the index does not hold, judged from its own text and metadata; a held
    one carries the record's text and metadata, never the ones the caller's object brought."""

    @property
    def scores(self) -> dict[str, float]:
        return {"bm25": self.bm25, "dense": self.dense, "provenance": self.provenance,
                "poison": self.poison, "fused": self.fused}


@dataclass(slots=True)
class SearchResult:
    """What a guarded search returns: kept hits, quarantined hits, ΔS per stage and alerts."""

    query: str
    namespace: str
    kept: list[Hit]
    quarantined: list[Hit]
    delta_s: dict[str, float]
    lambda_state: str
    alerts: list[str] = field(default_factory=list)
    violations: int = 0
    dropped: list[str] = field(default_factory=list)
    """Ids of the foreign hits the namespace fence dropped (``violations`` of them)."""

    @classmethod
    def empty(cls, query: str, namespace: str, *, violations: int = 0, dropped: Sequence[str] = ()) -> SearchResult:
        """No context at all: ΔS is 1 at every stage and λ is chaotic."""
        stages = {"retrieve": 1.0, "fuse": 1.0, "quarantine": 1.0}
        return cls(query, namespace, [], [], stages, "chaotic", [], violations, list(dropped))

    def contract(self, *, citation_chars: int = 600) -> dict[str, Any]:
        """The cite-then-explain contract (a dict that validates against the shipped schema)."""
        return {
            "version": "1",
            "query": self.query,
            "namespace": self.namespace,
            "kept": [
                {"snippet_id": h.id, "source_url": h.source_url, "content_hash": h.content_hash,
                 "scores": h.scores, "reasons": list(h.reasons), "citation": h.text[:citation_chars]}
                for h in self.kept
            ],
            "quarantined": [
                {"snippet_id": h.id, "reason": h.reasons[0] if h.reasons else "poison_score",
                 "reasons": list(h.reasons), "poison": h.poison, "stage": h.stage or "query"}
                for h in self.quarantined
            ],
            "ΔS": self.delta_s["quarantine"],
            "ΔS_stages": dict(self.delta_s),
            "λ_state": self.lambda_state,
            "next_fix": next_fix(kept=len(self.kept), quarantined=len(self.quarantined),
                                 final=self.delta_s["quarantine"],
                                 state=self.lambda_state,  # type: ignore[arg-type]
                                 alerts=self.alerts),
            "alerts": list(self.alerts),
        }

    def contract_json(self, *, validate: bool = False) -> bytes:
        payload = self.contract()
        if validate:
            validate_contract(payload)
        return orjson.dumps(payload)


@dataclass(frozen=True, slots=True)
class IngestReport:
    """The outcome of one :meth:`GuardedIndex.add` batch."""

    batch_id: str
    namespace: str
    kept: tuple[str, ...]
    quarantined: tuple[tuple[str, float, tuple[str, ...]], ...]
    rescored: tuple[tuple[str, float, float, tuple[str, ...]], ...] = ()
    """Existing documents the batch changed the evidence of: ``(id, old poison, new poison, reasons)``.
    One whose new score reaches τ is withheld from searches from now on (``release`` undoes it)."""


def _reading(method: Callable[..., R]) -> Callable[..., R]:
    """Run a read method under the index's shared lock (writes wait until it returns)."""

    @functools.wraps(method)
    def locked(self: GuardedIndex, *args: Any, **kwargs: Any) -> R:
        with self._lock.read():
            return method(self, *args, **kwargs)

    return locked


def _check_query(query: Any, limit: int) -> None:
    if not isinstance(query, str):
        raise QueryError(f"query must be str, got {type(query).__name__}")
    if len(query) > limit:
        raise QueryError(f"query is {len(query)} characters, longer than max_query_chars={limit}: "
                         "shorten it, or raise GuardConfig.max_query_chars")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:  # it could not be logged, embedded or put into the contract JSON
        raise QueryError("query contains a lone surrogate") from None


def _doc_ids(ids: Any) -> list[str]:
    """The ids of a ``get`` or ``delete``: a list of ``str``. A single string is refused rather
    than read as its characters (``delete("doc-1")`` would delete ``"d"``, ``"o"``, ...)."""
    if isinstance(ids, str | bytes):
        raise DocumentError(f"ids must be a list of ids, not one string: pass [{ids!r}]")
    if isinstance(ids, Mapping) or not isinstance(ids, Iterable):
        raise DocumentError(f"ids must be a list of str, got {type(ids).__name__}")
    out = list(ids)
    for doc_id in out:
        if not isinstance(doc_id, str):
            raise DocumentError(f"ids must be str, got {type(doc_id).__name__} {doc_id!r:.40}")
    return out


class GuardedIndex:
    """A guarded hybrid (BM25 + FAISS) index with per-namespace shards and a quarantine.

    Args:
        embedder: a LangChain ``Embeddings``, a LlamaIndex embed model, a callable, or ``None`` when
            every batch and query brings its own vectors.
        dim: the embedding dimension; learnt from the first batch when not given.
        config: weights, τ, fusion mode and index choices.
        policy: the ingest trust policy (signed manifests from allowlisted keys by default).
        ledger: the decision ledger (in memory by default).
        model: the poison model (the shipped one by default).
        judge: an optional second opinion at ingest, see :data:`guarded_retriever.Judge`.

    Example:
        >>> from guarded_retriever import GuardedIndex, TrustPolicy
        >>> from guarded_retriever.testing import HashingEmbedder
        >>> index = GuardedIndex(HashingEmbedder(), policy=TrustPolicy(manifest_required=False))
        >>> ns = {"tenant_id": "acme", "product_id": "kb", "env": "prod"}
        >>> _ = index.add([("d1", "Reset your password from the Settings page.")], namespace=ns)
        >>> [h.id for h in index.search("reset password", namespace=ns, k=1).kept]
        ['d1']
    """

    def __init__(
        self,
        embedder: Embedder | Any | None = None,
        *,
        dim: int | None = None,
        config: GuardConfig | None = None,
        policy: TrustPolicy | None = None,
        ledger: Ledger | None = None,
        model: PoisonModel | None = None,
        judge: Judge | None = None,
    ) -> None:
        self.config = config if config is not None else GuardConfig()
        self.embedder = as_embedder(embedder) if embedder is not None else None
        self.dim = dim
        self.pipeline = IngestPipeline(ledger=ledger, policy=policy, config=self.config, model=model,
                                       judge=judge)
        c = self.config
        self.main = Partition("main", k1=c.bm25_k1, b=c.bm25_b, kind=c.dense_index)
        self.quarantine = Partition("quarantine", k1=c.bm25_k1, b=c.bm25_b, kind=c.dense_index)
        self.stats: dict[str, int] = {"queries": 0, "namespace_violations": 0, "quarantined_at_query": 0,
                                      "revoked_blocked": 0, "rescored_across_tau": 0, "family_deferred": 0}
        self._contrast = ContrastDetector(floor=c.contrast_floor, ceiling=c.contrast_ceiling,
                                          rescore_cosine=c.contrast_rescore_cosine)
        self._lock = RWLock()
        self._revoke_listeners: list[Callable[[RevocationReport], None]] = []
        self.generation = 0
        """The generation of the last save or load (0: never saved); each save writes one more."""

    @property
    def _write_lock(self) -> AbstractContextManager[None]:
        """Exclusive access for a write (searches wait; see ``_rwlock``)."""
        return self._lock.write()

    @property
    def ledger(self) -> Ledger:
        return self.pipeline.ledger

    @property
    def model(self) -> PoisonModel:
        return self.pipeline.model

    def __len__(self) -> int:
        return len(self.main) + len(self.quarantine)

    # -- ingest ---------------------------------------------------------------------------------

    def add(
        self,
        documents: Iterable[GuardDocument | Mapping[str, Any] | tuple[str, str]],
        *,
        namespace: Namespace | Mapping[str, Any] | str,
        manifest: SignedManifest | IngestManifest | Mapping[str, Any] | bytes | str | None = None,
        vectors: Any = None,
        on_commit: Callable[[IngestReport], None] | None = None,
    ) -> IngestReport:
        """Ingest one batch through the guard: it lands whole in the ledger and the indexes, or not at all.

        Args:
            documents: ``GuardDocument``s, ``{"id", "text", "metadata"}`` mappings or ``(id, text)``.
            namespace: the batch's namespace; document metadata can never override it.
            manifest: the batch's signed manifest (see :class:`TrustPolicy`).
            vectors: precomputed embeddings, one row per document; otherwise the embedder is used.
            on_commit: called with the report inside the ledger transaction, after the indexes
                are updated; if it raises, the ledger rolls back and the batch is removed from the
                indexes again (adapters write their base store here).

        Raises:
            GuardedRetrieverError: any subclass; nothing was written.
        """
        batch = self.pipeline.prepare(documents, namespace=namespace, manifest=manifest)
        texts = [d.doc.text for d in batch.documents]
        if vectors is None:
            if self.embedder is None:
                raise ConfigError("no embedder configured: pass vectors= with every batch")
            vectors = self.embedder.embed_documents(texts)
        vecs = check_vectors(vectors, self.dim, len(texts))
        key = batch.namespace.key
        with self._write_lock:
            fresh_dim = self.dim is None
            if fresh_dim:
                self.dim = vecs.shape[1]
            elif vecs.shape[1] != self.dim:  # a concurrent first batch fixed another dimension
                raise EmbeddingError(f"expected {self.dim}-dimensional embeddings, got {vecs.shape[1]}")
            # Evidence that needs the vectors and the namespace as it stands: under the lock, so
            # no other batch changes the neighbourhood between the measurement and the write.
            batch, updates = self._neighbourhood(batch, vecs)
            new_in = [p for p in (self.main, self.quarantine) if key not in p.shards]
            report = IngestReport(
                batch_id=batch.batch_id,
                namespace=batch.namespace.key,
                kept=tuple(d.doc.id for d in batch.kept),
                quarantined=tuple((d.doc.id, d.poison, d.reasons) for d in batch.quarantined),
                rescored=tuple((u.new.id, u.old.poison, u.new.poison, u.new.reasons) for u in updates),
            )
            undo: Callable[[], None] | None = None
            try:
                with self.ledger.transaction() as tx:
                    self.pipeline.commit(batch, conn=tx)
                    if updates:
                        self.ledger.audit_in(tx, "rescored", key, batch_id=batch.batch_id, documents=[
                            {"id": u.new.id, "poison": u.new.poison, "was": u.old.poison,
                             "reasons": list(u.new.reasons)} for u in updates])
                    undo = self._apply(batch, vecs, updates)
                    if on_commit is not None:
                        on_commit(report)
            except BaseException:
                # The ledger rolled back (an on_commit error, a failed COMMIT, a disk full ...):
                # take the batch out of the shards again, old versions of re-ingested ids back in.
                if undo is not None:
                    undo()
                for partition in new_in:  # no empty shard of a namespace that never got a batch
                    partition.shards.pop(key, None)
                if fresh_dim:
                    self.dim = None
                raise
            self.pipeline.after_commit(batch)
        self._observe_batch(batch, updates)
        return report

    def _neighbourhood(self, batch: PreparedBatch, vecs: np.ndarray) -> tuple[PreparedBatch, list[RowUpdate]]:
        """``cluster_contrast`` for the batch and the existing rows it changes (see ``_neighbourhood``)."""
        key = batch.namespace.key
        shards = [s for s in (self.main.shards.get(key), self.quarantine.shards.get(key))
                  if s is not None and len(s)]
        ids = [d.doc.id for d in batch.documents]
        texts = [d.canonical for d in batch.documents]
        detector = self._contrast
        strengths, found = batch_contrast(detector, shards, vecs, ids, texts)
        batch = self.pipeline.with_feature(batch, "cluster_contrast", strengths)
        return batch, neighbour_updates(detector, found, vecs, ids, texts, _CONTRAST, self._rescored)

    def _rescored(self, row: Row, features: tuple[float, ...]) -> Row:
        """``row`` re-scored on new features; a judge's verdict at ingest is never lowered."""
        judged = row.poison if "judge" in row.reasons else None
        poison, reasons, _ = self.pipeline.verdict(features, judged)
        return replaced(row, features, poison, reasons)

    def _observe_batch(self, batch: PreparedBatch, updates: Sequence[RowUpdate] = ()) -> None:
        domain = source_domain(batch.provenance.source_url)
        self.emit(logging.INFO, "ingest.batch", namespace=batch.namespace.key, domain=domain or None,
                  documents=len(batch.documents), quarantined=len(batch.quarantined),
                  reasons=sorted({r for d in batch.quarantined for r in d.reasons}))
        tau = self.config.tau
        crossed = [u for u in updates if (u.old.poison >= tau) != (u.new.poison >= tau)]
        if crossed:
            self.stats["rescored_across_tau"] += len(crossed)
            # A kept document that new evidence pushes over τ is withheld from every search from
            # now on (the query-time guard reads its new score); say so where operators look.
            self.emit(logging.WARNING, "ingest.rescored", namespace=batch.namespace.key,
                      documents=[{"id": u.new.id, "poison": u.new.poison, "was": u.old.poison,
                                  "reasons": list(u.new.reasons)} for u in crossed])

    def emit(self, level: int, event: str, **fields: Any) -> None:
        """A structured log event on the ``guarded_retriever`` logger (``record.gr_event`` and
        ``record.gr`` carry the fields). The package never configures logging itself."""
        if logger.isEnabledFor(level):
            logger.log(level, "%s %s", event, orjson.dumps(fields, default=str).decode(),
                       extra={"gr_event": event, "gr": fields})

    def _apply(self, batch: PreparedBatch, vecs: np.ndarray, updates: Sequence[RowUpdate] = ()
               ) -> Callable[[], None]:
        """Put a batch into the shards and swap in re-scored rows; returns a function that undoes both."""
        assert self.dim is not None
        key = batch.namespace.key
        prov = batch.provenance
        main = self.main.shard(key, self.dim)
        quarantine = self.quarantine.shard(key, self.dim)
        replaced: list[tuple[Shard, Row, np.ndarray, list[str]]] = []
        for d in batch.documents:
            for shard in (main, quarantine):
                pos = shard.positions.get(d.doc.id)
                if pos is not None:
                    old = shard.rows[pos]
                    replaced.append((shard, old, shard.dense.vectors[pos].copy(), tokenize(old.canonical)))

        def undo() -> None:
            for u in updates:
                if u.shard.positions.get(u.old.id) == u.position:
                    u.shard.replace_row(u.position, u.old)
            for d in batch.documents:
                main.discard(d.doc.id)
                quarantine.discard(d.doc.id)
            for shard, old, vec, tokens in replaced:
                shard.add(old, tokens, vec)

        try:
            for u in updates:
                u.shard.replace_row(u.position, u.new)
            for d, v in zip(batch.documents, vecs, strict=True):
                row = Row(
                    id=d.doc.id, text=d.doc.text, canonical=d.canonical, metadata=dict(d.doc.metadata),
                    namespace=key, content_hash=d.content_hash, source_url=prov.source_url,
                    manifest_id=prov.manifest_id, provenance=prov.score, features=d.features,
                    poison=d.poison, reasons=d.reasons,
                )
                # A re-ingested id replaces its old version wherever that lived.
                main.discard(row.id)
                quarantine.discard(row.id)
                (quarantine if d.decision == "quarantine" else main).add(row, d.tokens, v)
        except BaseException:
            undo()  # half a batch never stays
            raise
        return undo

    def delete(self, ids: Iterable[str], *, namespace: Namespace | Mapping[str, Any] | str) -> int:
        """Remove documents from both partitions of a namespace; returns how many were removed."""
        key = self.pipeline.schema.parse(namespace).key
        wanted = list(dict.fromkeys(_doc_ids(ids)))
        removed: list[str] = []
        with self._write_lock, self.ledger.transaction() as tx:
            if self.ledger.is_frozen(key):  # checked inside the transaction: no freeze slips between
                raise NamespaceFrozenError(f"namespace {key!r} is frozen")
            self.ledger.delete_documents([(key, i) for i in wanted], conn=tx)
            for doc_id in wanted:
                for partition in (self.main, self.quarantine):
                    shard = partition.shards.get(key)
                    if shard is not None and shard.discard(doc_id) is not None:
                        removed.append(doc_id)
                        self.pipeline.forget(key, doc_id)
        return len(removed)

    @_reading
    def ids(self, *, namespace: Namespace | Mapping[str, Any] | str, include_quarantined: bool = False) -> list[str]:
        """The ids stored in a namespace (kept ones; quarantined too when asked), in ingest order."""
        key = self.pipeline.schema.parse(namespace).key
        out: list[str] = []
        for partition in (self.main, self.quarantine) if include_quarantined else (self.main,):
            shard = partition.shards.get(key)
            if shard is not None:
                out.extend(sorted(shard.positions, key=shard.positions.__getitem__))
        return out

    # -- search ---------------------------------------------------------------------------------

    def _query_vector(self, query: str, query_vector: Any) -> np.ndarray:
        if query_vector is None:
            if self.embedder is None:
                raise ConfigError("no embedder configured: pass query_vector=")
            query_vector = self.embedder.embed_query(query)
        return check_query_vector(query_vector, self.dim)

    def _check_request(self, query: Any, namespace: Any, k: Any) -> Namespace:
        ns = self.pipeline.schema.parse(namespace)
        _check_query(query, self.config.max_query_chars)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise ConfigError(f"k must be an int in [1, {MAX_K}], got {k!r}")
        return ns

    def search(
        self,
        query: str,
        *,
        namespace: Namespace | Mapping[str, Any] | str,
        k: int = 4,
        query_vector: Any = None,
        dense: DenseSearch | None = None,
    ) -> SearchResult:
        """Guarded hybrid search inside one namespace.

        Args:
            query: the user's question.
            namespace: the request's namespace; required, never defaulted.
            k: how many hits to keep.
            query_vector: the query's embedding, when the caller already has it.
            dense: an external dense retriever (a wrapped vector store) that nominates the dense
                candidates instead of the index's own FAISS shard; see :data:`DenseSearch`.

        Raises:
            NamespaceError: the namespace is missing or malformed (never defaulted).
            NamespaceViolation: a foreign hit reached the exit and ``strict_namespaces`` is on.
        """
        ns = self._check_request(query, namespace, k)
        # Outside the lock: canonicalising is the one per-query cost that grows with the query's
        # text, and a writer waiting behind a slow reader would queue every tenant behind both.
        qc = canonicalize(query)
        qtokens = tokenize(qc)
        with self._lock.read():
            return self._search(query, ns, k, qc, qtokens, query_vector, dense)

    def _search(self, query: str, ns: Namespace, k: int, qc: str, qtokens: list[str],
                query_vector: Any, dense: DenseSearch | None) -> SearchResult:
        key = ns.key
        self.stats["queries"] += 1
        shard = self.main.shards.get(key)
        qshard = self.quarantine.shards.get(key)
        if (shard is None or not len(shard)) and (qshard is None or not len(qshard)):
            return SearchResult.empty(query, key)
        qvec = self._query_vector(query, query_vector)
        revoked = self._withheld_hashes(key)  # once per query: on PostgreSQL it is a round trip
        cfg = self.config
        n_cand = max(cfg.candidates, k)

        cands = _candidates(shard, qtokens, qvec, n_cand, dense) if shard is not None else None
        kept: list[Hit] = []
        quarantined: list[Hit] = []
        alerts: list[str] = []
        retrieve_rows: list[int] = []
        pool_vectors = np.zeros((0, len(qvec)), np.float32)
        n_fused = 0
        kept_at: list[int] = []  # positions in the pool
        dropped: list[str] = []
        violations = 0
        norm: tuple[float, float, float] = (0.0, 0.0, 1.0)
        if cands is not None and cands.rows.size:
            assert shard is not None
            retrieve_rows = cands.retrieve_rows(k)
            fused = self._fuse(shard, cands)
            norm = cands.normalisers()
            order = np.lexsort((cands.rows, -fused))  # positions in ``cands``, best first
            n_fused = min(k, len(order))  # the fused top-k is the head of the pool
            pool = order[: k + cfg.guard_pool].tolist()
            pool_rows = cands.rows[pool].tolist()
            pool_vectors = shard.dense.vectors[pool_rows]  # gathered once: the guard and ΔS read it
            verdicts = self._guard(shard, pool_rows, pool_vectors, qc, qtokens)
            tau = cfg.tau
            fused_at = fused.tolist()
            rows = shard.rows
            # Query-time evidence quarantines, it does not re-rank: below τ, echo and clustering
            # mostly measure topicality (the relevant passages of a query resemble each other),
            # and penalising that would cost clean ranking quality for no protection. So the
            # survivors keep the pool's order, but for the family cap.
            crowded: FamilyCap[Hit] = FamilyCap(pool_vectors, cfg.paraphrase_cosine, cfg.family_cap)
            window = min(k, cfg.family_window)
            for j, (i, r, (p, why, feats)) in enumerate(zip(pool, pool_rows, verdicts, strict=True)):
                row = rows[r]
                if revoked and row.content_hash in revoked:
                    continue
                if p >= tau:
                    self.stats["quarantined_at_query"] += 1
                    quarantined.append(self._hit(row, cands, i, fused_at[i], p, why, "query", feats))
                elif len(kept) < k:
                    if row.namespace != key:  # defence in depth: shards are per namespace already
                        violations += 1
                        dropped.append(row.id)
                        self._violation(key, row)
                        continue
                    hit = self._hit(row, cands, i, fused_at[i], p, why, None, feats)
                    if len(kept) < window and crowded(j, kept_at):
                        crowded.hold(j, hit)
                        continue
                    kept.append(hit)
                    kept_at.append(j)
                    if len(kept) == window:  # the window is full: the family resumes
                        crowded.release(kept, kept_at, k)
            crowded.release(kept, kept_at, k)  # the pool ran out before the window filled
            if crowded.deferred:
                alerts.append("paraphrase_family_capped")
                self.stats["family_deferred"] += crowded.deferred
            top = pool_rows[0]
            if rows[top].provenance < cfg.low_provenance_alert:
                alerts.append("low_provenance_top")
            if verdicts[0][0] >= tau:
                alerts.append("top_candidate_quarantined")
        if qshard is not None and len(qshard):
            quarantined.extend(self._withheld(qshard, key, qtokens, qvec, k, kept, norm, revoked))
        if violations:
            self.stats["namespace_violations"] += violations
        vectors = shard.dense.vectors if shard is not None else pool_vectors
        stages = {
            "retrieve": delta_s(qvec, vectors[retrieve_rows]),
            "fuse": delta_s(qvec, pool_vectors[:n_fused]),
            "quarantine": delta_s(qvec, pool_vectors[kept_at]),
        }
        state = lambda_state(stages["retrieve"], stages["fuse"], stages["quarantine"], has_context=bool(kept))
        result = SearchResult(query, key, kept, quarantined, stages, state, alerts, violations, dropped)
        self._observe_query(result)
        return result

    def _observe_query(self, result: SearchResult) -> None:
        if result.quarantined:
            self.emit(logging.INFO, "query.quarantined", namespace=result.namespace,
                      hits=[{"id": h.id, "stage": h.stage, "reasons": list(h.reasons)} for h in result.quarantined])
        if logger.isEnabledFor(logging.DEBUG):
            w = self.config.weights
            self.emit(logging.DEBUG, "query.trace", namespace=result.namespace, delta_s=result.delta_s,
                      lambda_state=result.lambda_state, alerts=result.alerts,
                      top=[{"id": h.id, "fused": h.fused, "bm25": h.bm25, "dense": h.dense,
                            "provenance": w.gamma * h.provenance, "poison": -w.delta * h.poison}
                           for h in result.kept])

    def _fuse(self, shard: Shard, cands: _Candidates) -> np.ndarray:
        """Fused score per candidate, aligned with ``cands.rows`` (rows are unique in a shard)."""
        cfg = self.config
        if cfg.fusion == "rrf":
            by_row = weighted_rrf([cands.bm25_rows.tolist(), cands.dense_rows.tolist()],
                                  cfg.rrf_weights, c=cfg.rrf_c)
            return np.array([by_row.get(r, 0.0) for r in cands.rows.tolist()])
        prov, poison = shard.priors(cands.rows)
        w = cfg.weights
        return linear_fusion_arrays(cands.bm25, cands.dense, prov, poison,
                                    alpha=w.alpha, beta=w.beta, gamma=w.gamma, delta=w.delta)

    def _guard(
        self, shard: Shard, pool: Sequence[int], vectors: np.ndarray, qc: str, qtokens: Sequence[str]
    ) -> list[tuple[float, tuple[str, ...], tuple[float, ...]]]:
        """Re-score the pool (its rows and their vectors) with the query-time features;
        ``(poison, reasons, features)`` for each pool row, in pool order."""
        rows = shard.rows
        cluster = paraphrase_cluster(vectors, self.config.paraphrase_cosine).tolist()
        echo_of = EchoScorer(qc, qtokens)
        score = self.model.score
        verdicts = []
        for r, near in zip(pool, cluster, strict=True):
            row = rows[r]
            echo = echo_of(row.canonical)
            if echo == 0.0 and near == 0.0:  # nothing query-specific: the ingest verdict stands
                verdicts.append((row.poison, row.reasons, row.features))
                continue
            features = list(row.features)
            features[_ECHO] = echo
            features[_CLUSTER] = near
            p, why = score(features)
            if p < row.poison:  # a judge's verdict at ingest is never lowered at query time
                p, why = row.poison, row.reasons
            verdicts.append((round(p, 6), why, tuple(features)))
        return verdicts

    def _hit(self, row: Row, cands: _Candidates, i: int, fused: float, poison: float,
             reasons: tuple[str, ...], stage: str | None, features: tuple[float, ...] | None = None) -> Hit:
        """A hit for the candidate at position ``i`` of ``cands``."""
        return Hit(row.id, row.text, row.metadata, row.namespace, row.content_hash, row.source_url,
                   row.manifest_id, float(cands.bm25[i]), float(cands.dense[i]), row.provenance,
                   poison, round(fused, 6), reasons, stage,
                   row.features if features is None else features)

    def _withheld(self, qshard: Shard, key: str, qtokens: Sequence[str], qvec: np.ndarray, k: int,
                  kept: Sequence[Hit], norm: tuple[float, float, float], revoked: frozenset[str]) -> list[Hit]:
        """Documents quarantined at ingest that would have made this query's top-k."""
        cands = _candidates(qshard, qtokens, qvec, k)
        if cands is None or not cands.rows.size:
            return []
        w = self.config.weights
        bmax, dmin, dspan = norm
        if bmax <= 0:
            bmax = max(cands.bm25_max, 1e-12)
        if dspan <= 1e-12:
            dmin, dspan = cands.dense_min, max(cands.dense_max - cands.dense_min, 1e-12)
        floor = min((w.alpha * h.bm25 / bmax + w.beta * (h.dense - dmin) / dspan + w.gamma * h.provenance
                     for h in kept), default=-np.inf) if len(kept) >= k else -np.inf
        out = []
        for i, r in enumerate(cands.rows.tolist()):
            row = qshard.rows[r]
            if row.content_hash in revoked:
                continue
            if row.namespace != key:
                self._violation(key, row)
                continue
            relevance = float(w.alpha * min(1.0, cands.bm25[i] / bmax)
                              + w.beta * min(1.0, max(0.0, (cands.dense[i] - dmin) / dspan))
                              + w.gamma * row.provenance)
            if relevance >= floor:
                out.append(self._hit(row, cands, i, relevance - w.delta * row.poison, row.poison,
                                     row.reasons, "ingest"))
        return out

    def report_violations(self, namespace: Namespace | Mapping[str, Any] | str, ids: Iterable[str],
                          *, source: str = "adapter") -> int:
        """Count and log foreign documents an adapter blocked before they reached the core (a base
        store that returned another namespace's ids); raises in strict mode like the core does."""
        key = self.pipeline.schema.parse(namespace).key
        blocked = _doc_ids(ids)
        if blocked:
            self.stats["namespace_violations"] += len(blocked)
            self.emit(logging.WARNING, "namespace.violation", namespace=key, ids=blocked, source=source)
            if self.config.strict_namespaces:
                raise NamespaceViolation(key, "?", blocked[0])
        return len(blocked)

    def _violation(self, expected: str, row: Row) -> None:
        self.emit(logging.WARNING, "namespace.violation", namespace=expected, ids=[row.id],
                  owner=row.namespace, source="core")
        if self.config.strict_namespaces:
            raise NamespaceViolation(expected, row.namespace, row.id)

    def search_quarantine(
        self,
        query: str,
        *,
        namespace: Namespace | Mapping[str, Any] | str,
        k: int = 10,
        query_vector: Any = None,
    ) -> list[Hit]:
        """Search only the quarantine of a namespace, for review; never mixed into :meth:`search`."""
        ns = self._check_request(query, namespace, k)
        qtokens = tokenize(canonicalize(query))  # outside the lock, as in search()
        with self._lock.read():
            return self._search_quarantine(query, ns, k, qtokens, query_vector)

    def _search_quarantine(self, query: str, ns: Namespace, k: int, qtokens: list[str],
                           query_vector: Any) -> list[Hit]:
        qshard = self.quarantine.shards.get(ns.key)
        if qshard is None or not len(qshard):
            return []
        cands = _candidates(qshard, qtokens, self._query_vector(query, query_vector), k)
        if cands is None or not cands.rows.size:
            return []
        fused = self._fuse(qshard, cands)
        hits = []
        revoked = self._withheld_hashes(ns.key)
        for i in np.lexsort((cands.rows, -fused))[:k].tolist():
            row = qshard.rows[int(cands.rows[i])]
            if row.content_hash in revoked:
                continue
            if row.namespace != ns.key:
                self._violation(ns.key, row)
                continue
            hits.append(self._hit(row, cands, i, float(fused[i]), row.poison, row.reasons, "ingest"))
        return hits

    def screen(
        self,
        query: str,
        documents: Sequence[GuardDocument | Mapping[str, Any] | tuple[Any, ...]],
        *,
        namespace: Namespace | Mapping[str, Any] | str,
        query_vector: Any = None,
        vectors: Any = None,
        scores: Sequence[float | None] | None = None,
    ) -> SearchResult:
        """Guard documents that another retriever found: the postprocessor face of the index.

        Each document is fenced to ``namespace``, scored for poison with the ingest-time and
        query-time features, and kept (in the order given: a postprocessor filters, it does not
        re-rank) or quarantined.

        The fence fails closed:

        * a document this index holds in ``namespace`` with the same text is judged by its ingest
          record (provenance, poison, reasons); one it holds in quarantine stays quarantined;
        * any other document passes only when its metadata carries every namespace key with
          exactly the request's value, and is then scored from its text alone (provenance 0);
        * everything else is dropped and counted as a namespace violation.

        Args:
            query: the user's question.
            documents: ``GuardDocument``s, ``{"id", "text", "metadata"}`` mappings or tuples.
            namespace: the request's namespace.
            query_vector: the query's embedding, when the caller has it.
            vectors: embeddings of ``documents``, row-aligned, when the caller has them; otherwise
                the index's own vectors, then its embedder, are used.
            scores: the upstream retriever's scores, reported as each hit's ``fused`` score.
        """
        ns = self.pipeline.schema.parse(namespace)
        _check_query(query, self.config.max_query_chars)
        docs = [GuardDocument.coerce(d) for d in documents]
        if scores is not None and len(scores) != len(docs):
            raise ConfigError(f"got {len(scores)} scores for {len(docs)} documents")
        for d in docs:
            if not isinstance(d.text, str) or not isinstance(d.id, str):
                raise DocumentError("screened documents need a str id and text")
        # Outside the lock, as in search(): the texts' and the query's canonical forms.
        canons = [canonicalize(d.text) for d in docs]
        qc = canonicalize(query)
        with self._lock.read():
            return self._screen(query, ns, docs, canons, qc, query_vector, vectors, scores)

    def _screen(self, query: str, ns: Namespace, docs: list[GuardDocument], canons: list[str], qc: str,
                query_vector: Any, vectors: Any, scores: Sequence[float | None] | None) -> SearchResult:
        key = ns.key
        expected = ns.as_dict()
        self.stats["queries"] += 1
        if not docs:
            return SearchResult.empty(query, key)
        given = None
        if vectors is not None:
            given = check_vectors(vectors, self.dim, len(docs))
        shard = self.main.shards.get(key)
        qshard = self.quarantine.shards.get(key)
        revoked = self._withheld_hashes(key)
        withheld = qshard.by_content_hash() if qshard is not None else {}

        # 1. the fence: resolve each document to its ingest record, or to its own text.
        entries: list[tuple[int, GuardDocument, Row | None, str | None]] = []
        foreign: set[int] = set()  # documents judged from their own text: the index holds no record
        dropped: list[str] = []
        violations = 0
        for i, (d, canonical) in enumerate(zip(docs, canons, strict=True)):
            digest = content_hash(canonical)
            row, stage = None, None
            if digest in revoked:  # revoked text stays out, whoever presents it and under any id
                self.stats["revoked_blocked"] += 1
                continue
            if digest in withheld:  # quarantined at ingest: stays quarantined under any id
                row, stage = withheld[digest], "ingest"
            for part_shard, part_stage in ((shard, None), (qshard, "ingest")):
                pos = part_shard.positions.get(d.id) if part_shard is not None and row is None else None
                if pos is not None and part_shard is not None:
                    candidate = part_shard.rows[pos]
                    # The stored verdict only covers the exact text it was given for: a hash (64
                    # bits, over the canonical form) match is not enough to borrow its trust.
                    if candidate.content_hash == digest and candidate.text == d.text:
                        row, stage = candidate, part_stage
                        break
            if row is None and any(d.metadata.get(k) != v for k, v in expected.items()):
                violations += 1
                dropped.append(d.id)
                self.emit(logging.WARNING, "namespace.violation", namespace=key, ids=[d.id], source="screen")
                if self.config.strict_namespaces:
                    raise NamespaceViolation(key, str({k: d.metadata.get(k) for k in expected}), d.id)
                continue
            if row is None:
                tokens = tokenize(canonical)
                own = document_features(d.text, canonical, tokens)
                padded = [*own, *([0.0] * (len(FEATURES) - len(own)))]
                padded[_INJECTION] = self.pipeline.detector.score(d.text).strength
                feats = tuple(padded)
                p, why = self.model.score(feats)
                row = Row(id=d.id, text=d.text, canonical=canonical, metadata=dict(d.metadata),
                          namespace=key, content_hash=digest, source_url=None,
                          manifest_id=None, provenance=0.0, features=feats, poison=round(p, 6),
                          reasons=why)
                foreign.add(i)
            entries.append((i, d, row, stage))
        if violations:
            self.stats["namespace_violations"] += violations
        if not entries:
            return SearchResult.empty(query, key, violations=violations, dropped=dropped)

        # 2. vectors: the caller's, else the index's own, else the embedder's.
        qvec = self._query_vector(query, query_vector)
        vecs = np.zeros((len(entries), len(qvec)), dtype=np.float32)
        missing: list[int] = []
        for j, (i, d, row, stage) in enumerate(entries):
            if given is not None:
                vecs[j] = given[i]
                continue
            holder = qshard if stage == "ingest" else shard
            pos = holder.positions.get(d.id) if holder is not None else None
            if pos is not None and holder is not None and holder.rows[pos] is row:
                vecs[j] = holder.dense.vectors[pos]
            else:
                missing.append(j)
        if missing:
            if self.embedder is None:
                raise ConfigError("no embedder configured: pass vectors= for documents the index does not hold")
            vecs[missing] = check_vectors(
                self.embedder.embed_documents([entries[j][1].text for j in missing]), len(qvec), len(missing))

        # 3. query-time features on the whole candidate set, then the split at τ.
        echo_of = EchoScorer(qc, tokenize(qc))
        cluster = paraphrase_cluster(vecs, self.config.paraphrase_cosine)
        dense = vecs @ qvec
        tau = self.config.tau
        kept: list[Hit] = []
        quarantined: list[Hit] = []
        kept_at: list[int] = []
        for j, (i, d, row, stage) in enumerate(entries):
            assert row is not None
            features = list(row.features)
            features[_ECHO] = echo_of(row.canonical)
            features[_CLUSTER] = float(cluster[j])
            p, why = self.model.score(features)
            if p < row.poison:
                p, why = row.poison, row.reasons
            upstream = scores[i] if scores is not None else None
            fused = float(upstream) if upstream is not None else float(dense[j])
            # A held document goes out as the tenant's own record: a foreign object that matched
            # its id and text must not carry its own metadata through the fence.
            hit = Hit(d.id, row.text, row.metadata, key, row.content_hash, row.source_url, row.manifest_id,
                      0.0, float(dense[j]), row.provenance, round(p, 6), round(fused, 6), why, None,
                      tuple(features), i not in foreign)
            if stage == "ingest" or p >= tau:
                hit.stage = stage or "query"
                quarantined.append(hit)
            else:
                kept.append(hit)
                kept_at.append(j)
        alerts = []
        top = entries[0][2]
        assert top is not None
        if top.provenance < self.config.low_provenance_alert:
            alerts.append("low_provenance_top")
        if quarantined and quarantined[0].id == entries[0][1].id:
            alerts.append("top_candidate_quarantined")
        all_at = list(range(len(entries)))
        stages = {"retrieve": delta_s(qvec, vecs[all_at]), "fuse": delta_s(qvec, vecs[all_at]),
                  "quarantine": delta_s(qvec, vecs[kept_at])}
        state = lambda_state(stages["retrieve"], stages["fuse"], stages["quarantine"], has_context=bool(kept))
        result = SearchResult(query, key, kept, quarantined, stages, state, alerts, violations, dropped)
        self._observe_query(result)
        return result

    def _withheld_hashes(self, namespace: str) -> frozenset[str]:
        """Content hashes no search path may return, though a shard may still hold them.

        A revoke purges this process's shards, but a ledger other processes write to (PostgreSQL)
        holds revocations this process never applied. The ledger caches the set (one version
        check on PostgreSQL).
        Not ``@_reading``: callers already hold the read lock, and taking it twice can deadlock
        against a waiting writer.
        """
        return self.ledger.revoked_hashes(namespace)

    @_reading
    def get(self, ids: Iterable[str], *, namespace: Namespace | Mapping[str, Any] | str,
            include_quarantined: bool = False) -> list[Row]:
        """The stored documents of ``namespace`` with these ids, in the order asked (missing ones skipped)."""
        key = self.pipeline.schema.parse(namespace).key
        ids = _doc_ids(ids)
        revoked = self._withheld_hashes(key)
        shards = [self.main.shards.get(key)]
        if include_quarantined:
            shards.append(self.quarantine.shards.get(key))
        out = []
        for doc_id in ids:
            for shard in shards:
                pos = shard.positions.get(doc_id) if shard is not None else None
                if pos is not None and shard is not None:
                    if shard.rows[pos].content_hash not in revoked:
                        out.append(shard.rows[pos])
                    break
        return out

    # -- persistence and incident response (see ``_persist`` and ``_incident``) -----------------

    def save(self, path: str | Path, *, signer: ManifestSigner | None) -> Path:
        """Save the whole index, ledger included, to a new directory, signed by ``signer``."""
        from ._persist import save_index

        return save_index(self, path, signer=signer)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        trusted_signers: Iterable[str] = (),
        allow_unsigned: bool = False,
        embedder: Any = None,
        ledger_path: str | Path | None = None,
        min_generation: int | None = None,
        generation: int | None = None,
    ) -> GuardedIndex:
        """Verify and load a saved index; refuses tampered, truncated and (by default) unsigned ones,
        and with ``min_generation`` / ``generation`` an older or another snapshot
        (:class:`RollbackError`): pass the ``generation`` the last save left on the index."""
        from ._persist import load_index

        return load_index(path, trusted_signers=trusted_signers, allow_unsigned=allow_unsigned,
                          embedder=embedder, ledger_path=ledger_path, min_generation=min_generation,
                          generation=generation)

    def revoke(self, *, content_hash: str | None = None, manifest_id: str | None = None,
               reason: str = "revoked", embedder: Any = None,
               namespace: Namespace | Mapping[str, Any] | str | None = None) -> RevocationReport:
        """Remove a content hash or a manifest from every index, quarantine and cache, and refuse it
        from now on; lists (and with an embedder re-embeds) the removed documents' dense neighbours.

        Without ``namespace`` this is the operator's call: it reaches every namespace and its
        report names them all. With ``namespace`` (what a tenant-bound store passes) it removes
        and refuses the content in that namespace only, and reports nothing of any other."""
        from ._incident import revoke

        key = self.pipeline.schema.parse(namespace).key if namespace is not None else None
        report = revoke(self, content_hash=content_hash, manifest_id=manifest_id, reason=reason,
                        embedder=embedder, namespace=key)
        errors = []
        for listener in list(self._revoke_listeners):
            try:
                listener(report)
            except Exception as exc:  # every store gets its purge before anything is raised
                errors.append(exc)
        if errors:
            raise errors[0]
        return report

    def add_revoke_listener(self, listener: Callable[[RevocationReport], None]) -> None:
        """Call ``listener(report)`` after every revocation has purged the index: adapters delete
        their base stores' copies of ``report.removed`` here. A listener that raises fails the
        :meth:`revoke` call after the others ran; the index purge itself stands."""
        if listener not in self._revoke_listeners:
            self._revoke_listeners.append(listener)

    def export_suspects(self, **filters: Any) -> list[dict[str, Any]]:
        """Stored documents by ``content_hash``, ``manifest_id``, ``domain`` or poison ``reason``."""
        from ._incident import export_suspects

        return list(export_suspects(self, **filters))

    def rebuild(self) -> dict[str, int]:
        """Compact every shard and retrain its FAISS index."""
        from ._incident import rebuild

        return rebuild(self)

    def verify(self, gold: Iterable[Mapping[str, Any]], **options: Any) -> VerifyReport:
        """Acceptance on gold queries (ΔS and coverage); see :func:`guarded_retriever.verify`."""
        from ._incident import verify

        return verify(self, gold, **options)

    def freeze(self, namespace: Namespace | Mapping[str, Any] | str, *, reason: str = "incident") -> None:
        """Refuse every write to a namespace until :meth:`unfreeze` (reads go on)."""
        key = self.pipeline.schema.parse(namespace).key
        self.ledger.freeze(key, reason)
        self.emit(logging.WARNING, "namespace.frozen", namespace=key, reason=reason)

    def unfreeze(self, namespace: Namespace | Mapping[str, Any] | str) -> None:
        key = self.pipeline.schema.parse(namespace).key
        self.ledger.unfreeze(key)
        self.emit(logging.WARNING, "namespace.unfrozen", namespace=key)

    @_reading
    def metrics(self) -> dict[str, Any]:
        """A snapshot for dashboards: sizes, query counters, detections by reason and source domain,
        blocked namespace violations, revocations and frozen namespaces."""
        by_reason: Counter[str] = Counter()
        by_domain: Counter[str] = Counter()
        batches: set[str] = set()
        for _, reasons, url, batch in self.ledger.detections():  # the ledger survives save/load
            by_reason.update(reasons or ("poison_score",))
            by_domain[source_domain(url) or "-"] += 1
            batches.add(batch)
        return {
            "documents": {p.name: {k: len(s) for k, s in sorted(p.shards.items())}
                          for p in (self.main, self.quarantine)},
            "queries": self.stats["queries"],
            "quarantined_at_query": self.stats["quarantined_at_query"],
            "family_deferred": self.stats["family_deferred"],
            "namespace_violations": self.stats["namespace_violations"],
            "detections_by_reason": dict(by_reason.most_common()),
            "detections_by_domain": dict(by_domain.most_common()),
            "batches_with_detections": len(batches),
            "revocations": len(self.ledger.revocations()),
            "frozen": self.ledger.frozen(),
        }

    def namespaces(self) -> list[str]:
        return sorted(set(self.main.shards) | set(self.quarantine.shards))


@dataclass(slots=True)
class _Candidates:
    """The union of both retrievers' candidates, each with its exact BM25 and dense score."""

    rows: np.ndarray
    bm25: np.ndarray
    dense: np.ndarray
    bm25_rows: np.ndarray
    dense_rows: np.ndarray

    @property
    def bm25_max(self) -> float:
        return float(self.bm25.max()) if self.bm25.size else 0.0

    @property
    def dense_min(self) -> float:
        return float(self.dense.min()) if self.dense.size else 0.0

    @property
    def dense_max(self) -> float:
        return float(self.dense.max()) if self.dense.size else 0.0

    def normalisers(self) -> tuple[float, float, float]:
        return self.bm25_max, self.dense_min, self.dense_max - self.dense_min

    def retrieve_rows(self, k: int) -> list[int]:
        return list(dict.fromkeys([*self.bm25_rows[:k].tolist(), *self.dense_rows[:k].tolist()]))


def _candidates(shard: Shard, qtokens: Sequence[str], qvec: np.ndarray, n: int,
                dense: DenseSearch | None = None) -> _Candidates | None:
    if not len(shard):
        return None
    shard.refresh()
    d_cosines: np.ndarray | None = None
    if dense is None:
        found, d_cosines = shard.dense.search(qvec, n)
        d_rows = found.astype(np.int32)
    else:
        # Only ids this namespace's shard holds count; the position map is the fence.
        positions = shard.positions
        nominated = [positions[i] for i in dense(qvec, n) if isinstance(i, str) and i in positions]
        d_rows = np.asarray(list(dict.fromkeys(nominated))[:n], dtype=np.int32)
    # One BM25 pass gives the top-n and the dense candidates' exact scores (a dense-only
    # candidate either matches no term, 0, or sits below BM25's top-n).
    b_rows, b_scores, d_bm25 = shard.bm25.top_with(qtokens, n, d_rows)
    same = d_rows[:, None] == b_rows  # n × n at most: cheaper than np.isin here
    extra = ~same.any(axis=1)
    rows = np.concatenate([b_rows, d_rows[extra]])
    bm25 = np.maximum(np.concatenate([b_scores, d_bm25[extra]]), 0.0).astype(np.float64)
    if d_cosines is None:  # a base store's nominations come without scores we could trust
        cosines = shard.dense.similarity(qvec, rows)
    else:
        # FAISS scored its candidates exactly (flat codes, inner product on the stored vectors),
        # so only BM25's other rows need a dot product: gathering every candidate's vector again
        # cost more than the product, most of it in cache misses on a large shard.
        in_dense = same.any(axis=0)
        b_cosines = np.empty(len(b_rows), dtype=np.float32)
        b_cosines[in_dense] = d_cosines[same[:, in_dense].argmax(axis=0)]
        b_cosines[~in_dense] = shard.dense.similarity(qvec, b_rows[~in_dense])
        cosines = np.concatenate([b_cosines, d_cosines[extra]])
    return _Candidates(rows, bm25, cosines.astype(np.float64), b_rows, d_rows)
