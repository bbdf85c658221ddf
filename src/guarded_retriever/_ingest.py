"""The ingest pipeline: verify → canonicalise → fingerprint → score → route → record.

:meth:`IngestPipeline.prepare` does all the checking and scoring and touches nothing, so a batch
that fails anywhere leaves no trace. :meth:`IngestPipeline.commit` then writes the whole batch to
the ledger in one transaction. The retrieval core slots its own index updates between the two
(inside the same transaction), so the ledger and the indexes move together.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson

from ._canonical import canonicalize, tokenize
from ._config import GuardConfig
from ._exceptions import (
    ContentHashMismatch,
    DocumentError,
    NamespaceFrozenError,
    RevokedContentError,
)
from ._fingerprint import content_hash, simhash64_batch
from ._ledger import Decision, Ledger, LedgerRecord, ManifestRecord
from ._manifest import IngestManifest, SignedManifest
from ._namespace import Namespace, NamespaceSchema
from ._poison import FEATURE_INDEX, FEATURES, PoisonModel, document_features
from ._policy import Provenance, TrustPolicy
from ._simhash_index import SimhashIndex, near_pairs
from .detect import InjectionDetector

__all__ = ["GuardDocument", "IngestPipeline", "PreparedBatch", "PreparedDocument"]

MAX_ID_LENGTH = 512
MAX_TEXT_LENGTH = 1_000_000
_BURST = FEATURE_INDEX["near_duplicate_burst"]
_INJECTION = FEATURE_INDEX["injection"]


@functools.cache
def _shipped_detector() -> InjectionDetector:
    """Read and verified once per process: every index shares the shipped weights (read-only)."""
    return InjectionDetector.default()
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class GuardDocument:
    """A document to ingest: a stable ``id``, its ``text`` and optional user ``metadata``.

    Metadata is carried along untouched and never read for routing: a namespace key smuggled into
    it has no effect, because the namespace is an argument of the batch.
    """

    id: str
    text: str
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @classmethod
    def coerce(cls, value: Any) -> GuardDocument:
        if isinstance(value, GuardDocument):
            return value
        if isinstance(value, Mapping):
            return cls(value.get("id"), value.get("text"), value.get("metadata") or _EMPTY)  # type: ignore[arg-type]
        if isinstance(value, tuple) and len(value) in (2, 3):
            return cls(*value)
        raise DocumentError(f"expected a GuardDocument, a mapping or an (id, text) tuple, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class PreparedDocument:
    """A document after every check: what the indexes and the ledger receive."""

    doc: GuardDocument
    namespace: Namespace
    canonical: str
    tokens: list[str]
    content_hash: str
    simhash: int
    provenance: Provenance
    features: tuple[float, ...]
    poison: float
    reasons: tuple[str, ...]
    decision: Decision
    judged: float | None = None
    """The judge's verdict, kept so a re-score (new evidence after embedding) cannot undo it."""

    def record(self, batch_id: str) -> LedgerRecord:
        return LedgerRecord(
            namespace=self.namespace.key,
            doc_id=self.doc.id,
            manifest_id=self.provenance.manifest_id,
            content_hash=self.content_hash,
            simhash=self.simhash,
            provenance=self.provenance.score,
            poison=self.poison,
            reasons=self.reasons,
            decision=self.decision,
            batch_id=batch_id,
        )


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A validated, scored batch that has not been written anywhere yet."""

    batch_id: str
    namespace: Namespace
    provenance: Provenance
    manifest: ManifestRecord | None
    documents: tuple[PreparedDocument, ...]

    @property
    def kept(self) -> list[PreparedDocument]:
        return [d for d in self.documents if d.decision == "main"]

    @property
    def quarantined(self) -> list[PreparedDocument]:
        return [d for d in self.documents if d.decision == "quarantine"]


Judge = Callable[[Sequence[str]], Sequence[float | None]]
"""An optional second opinion (an LLM or a classifier the user supplies): given a batch's raw texts,
a poison probability per text, or ``None`` to abstain. The final score is the larger of the model's
and the judge's, and ``judge`` joins the reasons when it decided."""


class IngestPipeline:
    """Checks, scores and routes batches of documents, and records them in a :class:`Ledger`.

    Args:
        ledger: where decisions are recorded (an in-memory ledger by default).
        policy: the trust policy; the default requires a signed manifest from a trusted signer.
        config: thresholds and namespace keys.
        model: the poison model; the shipped one by default.
        judge: an optional second opinion, see :data:`Judge`.
        detector: the segment-level injection detector; the shipped one by default.
    """

    def __init__(
        self,
        *,
        ledger: Ledger | None = None,
        policy: TrustPolicy | None = None,
        config: GuardConfig | None = None,
        model: PoisonModel | None = None,
        judge: Judge | None = None,
        detector: InjectionDetector | None = None,
    ) -> None:
        self.ledger = ledger if ledger is not None else Ledger()
        self.policy = policy if policy is not None else TrustPolicy()
        self.config = config if config is not None else GuardConfig()
        self.model = model if model is not None else PoisonModel.default()
        self.judge = judge
        self.detector = detector if detector is not None else _shipped_detector()
        self.schema = NamespaceSchema(self.config.namespace_keys)
        # Per namespace, loaded from the ledger the first time a batch needs it: opening a large
        # saved index stays fast, and a namespace nobody writes to never pays for it.
        self._simhashes: dict[str, SimhashIndex] = {}
        # prepare() runs outside the index's write lock, concurrently with other batches' commits:
        # look-ups and updates of the near-duplicate indexes hold this lock. It is never held while
        # the ledger is read (a delete holds the ledger while it calls forget()).
        self._simhash_lock = threading.Lock()

    def _simhash_index(self, namespace: str) -> SimhashIndex:
        with self._simhash_lock:
            index = self._simhashes.get(namespace)
        if index is not None:
            return index
        fresh = SimhashIndex(self.config.near_duplicate_distance)
        for doc_id, simhash in self.ledger.simhashes(namespace):
            fresh.add(doc_id, simhash)
        with self._simhash_lock:
            # A batch committed meanwhile either finds this index and adds itself to it, or loaded
            # (and stored) its own, newer one first: keep whichever is in place.
            return self._simhashes.setdefault(namespace, fresh)

    # -- prepare: all checks, no writes ---------------------------------------------------------

    def prepare(
        self,
        documents: Iterable[GuardDocument | Mapping[str, Any] | tuple[str, str]],
        *,
        namespace: Namespace | Mapping[str, Any] | str,
        manifest: SignedManifest | IngestManifest | Mapping[str, Any] | bytes | str | None = None,
    ) -> PreparedBatch:
        """Validate, verify, fingerprint and score a batch without writing anything.

        Raises:
            NamespaceError: the namespace is missing or malformed.
            NamespaceFrozenError: the namespace accepts no writes.
            DocumentError: a document is malformed, duplicated in the batch, or revoked.
            ManifestError: the manifest is missing, untrusted, tampered, or does not list a text.
        """
        ns = self.schema.parse(namespace)
        if self.ledger.is_frozen(ns.key):
            raise NamespaceFrozenError(f"namespace {ns.key!r} is frozen")
        docs = self._validate_documents(documents)
        if manifest is not None and not isinstance(manifest, IngestManifest):
            manifest = SignedManifest.coerce(manifest)  # parse dict / JSON forms once
        provenance = self.policy.vouch(manifest)
        body = manifest.manifest if isinstance(manifest, SignedManifest) else manifest
        if body is not None and self.ledger.manifest_revoked(body.manifest_id, ns.key):
            raise RevokedContentError(f"manifest {body.manifest_id} has been revoked")

        canon = [canonicalize(d.text) for d in docs]
        hashes = [content_hash(c) for c in canon]
        for d, c in zip(docs, canon, strict=True):
            if not c:
                raise DocumentError("text is empty after canonicalisation", doc_id=d.id)
        if body is not None:
            vouched = body.vouches_for()  # by BLAKE2b digest: an xxh64 twin is not vouched for
            for d, h in zip(docs, hashes, strict=True):
                if h not in vouched:
                    raise ContentHashMismatch("the manifest does not list this text", doc_id=d.id)
        # Hashes revoked everywhere or in this namespace, and the texts ingested here under a
        # revoked manifest: a revoked crawl's pages stay out under any new manifest too (search
        # would withhold them anyway; refuse them here).
        revoked = self.ledger.revoked_hashes(ns.key)
        for d, h in zip(docs, hashes, strict=True):
            if h in revoked:
                raise RevokedContentError(f"content hash {h} has been revoked", doc_id=d.id)

        tokens = [tokenize(c) for c in canon]
        simhashes = simhash64_batch(tokens)
        features = np.zeros((len(docs), len(FEATURES)))
        features[:, : _BURST] = [document_features(d.text, c, t)[:_BURST]
                                 for d, c, t in zip(docs, canon, tokens, strict=True)]
        features[:, _BURST] = self._burst(ns.key, [d.id for d in docs], simhashes)
        features[:, _INJECTION] = [v.strength for v in self.detector.score_batch([d.text for d in docs])]

        judged = self.judge([d.text for d in docs]) if self.judge is not None else None
        if judged is not None and len(judged) != len(docs):
            raise DocumentError(f"the judge returned {len(judged)} scores for {len(docs)} documents")
        prepared = []
        # Whole arrays to Python numbers at once: per-element numpy access costs more than the rest.
        rows, fingerprints = features.tolist(), simhashes.tolist()
        for i, d in enumerate(docs):
            row = tuple(rows[i])
            verdict = judged[i] if judged is not None else None
            score, reasons, decision = self.verdict(row, None if verdict is None else float(verdict))
            prepared.append(
                PreparedDocument(
                    doc=d, namespace=ns, canonical=canon[i], tokens=tokens[i], content_hash=hashes[i],
                    simhash=fingerprints[i], provenance=provenance, features=row,
                    poison=score, reasons=reasons, decision=decision,
                    judged=None if verdict is None else float(verdict),
                )
            )
        return PreparedBatch(
            batch_id=uuid.uuid4().hex,
            namespace=ns,
            provenance=provenance,
            manifest=self._manifest_record(manifest, body, provenance),
            documents=tuple(prepared),
        )

    def verdict(self, features: Sequence[float], judged: float | None = None
                ) -> tuple[float, tuple[str, ...], Decision]:
        """``(poison, reasons, decision)`` for one feature row; a judge's verdict can only raise it."""
        score, reasons = self.model.score(features)
        if judged is not None and judged > score:
            score, reasons = judged, (*reasons, "judge")
        return round(score, 6), reasons, "quarantine" if score >= self.config.tau else "main"

    def with_feature(self, batch: PreparedBatch, name: str, values: Sequence[float] | np.ndarray) -> PreparedBatch:
        """The batch with one feature column set and every document re-scored and re-routed.

        Used for evidence that needs the batch's vectors, which exist only after ``prepare``.
        """
        column = FEATURE_INDEX[name]
        docs = []
        for d, value in zip(batch.documents, values, strict=True):
            features = list(d.features)
            features[column] = float(value)
            poison, reasons, decision = self.verdict(features, d.judged)
            docs.append(dataclasses.replace(d, features=tuple(features), poison=poison, reasons=reasons,
                                            decision=decision))
        return dataclasses.replace(batch, documents=tuple(docs))

    @staticmethod
    def _validate_documents(documents: Iterable[Any]) -> list[GuardDocument]:
        if isinstance(documents, str | bytes | Mapping):
            raise DocumentError("expected a sequence of documents, not a single one")
        try:
            docs = [GuardDocument.coerce(d) for d in documents]
        except TypeError as exc:
            raise DocumentError(f"malformed document: {exc}") from None
        if not docs:
            raise DocumentError("the batch is empty")
        seen: set[str] = set()
        for d in docs:
            if not isinstance(d.id, str) or not d.id or len(d.id) > MAX_ID_LENGTH:
                raise DocumentError(
                    f"id must be a non-empty string of at most {MAX_ID_LENGTH} characters, got {d.id!r}")
            if d.id in seen:
                raise DocumentError("id appears twice in the batch", doc_id=d.id)
            seen.add(d.id)
            if not isinstance(d.text, str):
                raise DocumentError(f"text must be str, got {type(d.text).__name__}", doc_id=d.id)
            if len(d.text) > MAX_TEXT_LENGTH:
                raise DocumentError(f"text is longer than {MAX_TEXT_LENGTH} characters", doc_id=d.id)
            if not isinstance(d.metadata, Mapping):
                raise DocumentError("metadata must be a mapping", doc_id=d.id)
            try:  # what save() writes: checked now, so one document cannot break every later save
                orjson.dumps(dict(d.metadata))
            except (TypeError, orjson.JSONEncodeError) as exc:
                raise DocumentError(f"metadata must be JSON (str keys; str, number, bool, null, list or "
                                    f"dict values; nested at most 254 deep): {exc}", doc_id=d.id) from None
            try:
                d.id.encode("utf-8")
                d.text.encode("utf-8")
            except UnicodeEncodeError:
                raise DocumentError("id or text contains a lone surrogate", doc_id=d.id) from None
        return docs

    @staticmethod
    def _manifest_record(
        manifest: SignedManifest | IngestManifest | None, body: IngestManifest | None, prov: Provenance
    ) -> ManifestRecord | None:
        if body is None:
            return None
        payload = manifest.to_json() if isinstance(manifest, SignedManifest) else body.canonical_json()
        return ManifestRecord(body.manifest_id, prov.signer, body.source_type, body.source_url, prov.signed, payload)

    def _burst(self, namespace: str, ids: Sequence[str], simhashes: np.ndarray) -> np.ndarray:
        """``near_duplicate_burst``: one near-duplicate is normal (mirrors, reposts); five are a burst."""
        existing = self._simhash_index(namespace)
        with self._simhash_lock:
            return self._burst_locked(existing, ids, simhashes)

    def _burst_locked(self, existing: SimhashIndex, ids: Sequence[str], simhashes: np.ndarray) -> np.ndarray:
        # Near-duplicates are counted by id, in the batch (whose ids are distinct) and in the
        # namespace. Every document with the same fingerprint has the same ones, so they are
        # gathered once per distinct fingerprint (a burst of copies costs one look-up): all ids
        # within reach of it, the document's own included, so it has len(near) - 1 of them.
        distinct, inverse = np.unique(simhashes, return_inverse=True)
        holders: list[list[str]] = [[] for _ in range(len(distinct))]
        for doc_id, k in zip(ids, inverse.tolist(), strict=True):
            holders[k].append(doc_id)
        partners = near_pairs(distinct, self.config.near_duplicate_distance)
        burst = np.zeros(len(distinct))
        for k, h in enumerate(distinct.tolist()):
            near = existing.near(h)
            near.update(holders[k])
            for p in partners.get(k, ()):
                near.update(holders[p])
            burst[k] = min(1.0, max(0, (len(near) - 1) - 1) / 4)
        return burst[inverse]

    # -- commit: one transaction ----------------------------------------------------------------

    def commit(self, batch: PreparedBatch, *, conn: Any = None) -> None:
        """Record a prepared batch in the ledger (in ``conn``'s transaction when one is given)."""
        self.ledger.record_batch(
            [d.record(batch.batch_id) for d in batch.documents],
            manifest=batch.manifest,
            batch_id=batch.batch_id,
            namespace=batch.namespace.key,
            conn=conn,
        )

    def forget(self, namespace: str, doc_id: str) -> None:
        """Drop a deleted or revoked document from the near-duplicate index."""
        with self._simhash_lock:
            index = self._simhashes.get(namespace)
            if index is not None:
                index.discard(doc_id)

    def after_commit(self, batch: PreparedBatch) -> None:
        """Update in-memory state once the batch is durable."""
        index = self._simhash_index(batch.namespace.key)
        with self._simhash_lock:
            index.add_many([d.doc.id for d in batch.documents], [d.simhash for d in batch.documents])

    def ingest(
        self,
        documents: Iterable[GuardDocument | Mapping[str, Any] | tuple[str, str]],
        *,
        namespace: Namespace | Mapping[str, Any] | str,
        manifest: SignedManifest | IngestManifest | Mapping[str, Any] | bytes | str | None = None,
    ) -> PreparedBatch:
        """:meth:`prepare` then :meth:`commit`: the batch lands whole, or raises and lands nothing."""
        batch = self.prepare(documents, namespace=namespace, manifest=manifest)
        self.commit(batch)
        self.after_commit(batch)
        return batch

