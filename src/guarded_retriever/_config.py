"""Configuration: every weight and threshold of the guard, validated in one place."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ._exceptions import ConfigError

__all__ = ["FusionWeights", "GuardConfig", "SettingsModel"]


class SettingsModel(BaseModel):
    """Frozen, closed pydantic model whose validation errors are :class:`ConfigError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(f"invalid {type(self).__name__}: {exc}") from None


class FusionWeights(SettingsModel):
    """``w_final = α·bm25 + β·dense + γ·provenance − δ·poison`` (DESIGN.md defaults)."""

    alpha: float = Field(0.35, ge=0.0)
    """Weight of the per-query normalised BM25 score."""
    beta: float = Field(0.45, ge=0.0)
    """Weight of the per-query normalised dense score."""
    gamma: float = Field(0.25, ge=0.0)
    """Weight of the provenance score (already in [0, 1])."""
    delta: float = Field(0.40, ge=0.0)
    """Weight of the poison score (already in [0, 1]); it is subtracted."""


class GuardConfig(SettingsModel):
    """Settings of the guard. Every field has a safe default; all are plain values.

    Example:
        >>> GuardConfig(tau=0.5, fusion="rrf").tau
        0.5
    """

    tau: float = Field(0.60, gt=0.0, le=1.0)
    """Quarantine threshold: a document or hit with ``poison_score >= tau`` is quarantined."""
    namespace_keys: tuple[str, ...] = ("tenant_id", "product_id", "env")
    """The keys every namespace must carry."""
    weights: FusionWeights = FusionWeights()
    """Linear fusion weights."""
    fusion: Literal["linear", "rrf"] = "linear"
    """``linear`` mixes normalised scores with the weights above; ``rrf`` is weighted reciprocal rank."""
    rrf_c: int = Field(60, ge=1)
    """The RRF constant: a hit at rank ``r`` (from 1) scores ``w / (r + c)``."""
    rrf_weights: tuple[float, float] = (0.5, 0.5)
    """RRF weights of the BM25 and dense lists."""
    candidates: int = Field(50, ge=1)
    """How many candidates each retriever contributes before fusion (at least ``k``)."""
    bm25_k1: float = Field(1.5, ge=0.0)
    bm25_b: float = Field(0.75, ge=0.0, le=1.0)
    near_duplicate_distance: int = Field(3, ge=0, le=3)
    """Simhash Hamming distance that counts as a near-duplicate (≤ 3: four 16-bit bands find all)."""
    dense_index: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    """FAISS index per namespace: ``auto`` is flat up to 20k vectors and IVF above."""
    guard_pool: int = Field(20, ge=1)
    """How many fused candidates beyond ``k`` the query-time guard examines."""
    paraphrase_cosine: float = Field(0.85, gt=0.0, le=1.0)
    """Cosine at or above which two candidates count as mutual paraphrases."""
    family_cap: int | None = Field(2, ge=1)
    """How many mutual paraphrases (``paraphrase_cosine``) may sit in the first ``family_window``
    kept hits; the next one waits until the window is full. A planted family that escapes
    detection then cannot fill the context; nothing is dropped. ``None`` keeps the pool's order."""
    family_window: int = Field(5, ge=1)
    """The leading hits the family cap applies to: the context an LLM is usually given. Past it
    the pool's order resumes, so a deeper ranking (nDCG@10) keeps honest near-duplicates."""
    contrast_floor: float = Field(0.35, ge=-1.0, le=1.0)
    """``cluster_contrast`` (3rd-neighbour cosine minus the 10th-30th mean) at or below which the
    feature is 0: about the 99th percentile of clean Wikipedia, web and news corpora."""
    contrast_ceiling: float = Field(0.55, ge=-1.0, le=1.0)
    """Contrast at or above which the feature is 1 (planted paraphrase families sit at 0.55-0.75)."""
    contrast_rescore_cosine: float = Field(0.8, gt=0.0, le=1.0)
    """An existing document this close to a new one gets its contrast recomputed at that ingest."""
    strict_namespaces: bool = False
    """Raise :class:`NamespaceViolation` instead of dropping and counting a foreign hit."""
    low_provenance_alert: float = Field(0.3, ge=0.0, le=1.0)
    """Raise an outlier alert when the top candidate's provenance is below this."""
    max_query_chars: int = Field(4096, ge=1)
    """The longest query (in characters) a search or screen accepts; a longer one raises
    :class:`QueryError`. Every per-query cost (canonicalising, tokenising, the echo feature, the
    embedder) grows with the query, so the cap bounds what one request can cost every tenant."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        w = self.weights
        if w.alpha + w.beta == 0:
            raise ValueError("at least one of alpha (bm25) and beta (dense) must be positive")
        if self.contrast_ceiling <= self.contrast_floor:
            raise ValueError("contrast_ceiling must be above contrast_floor")
        if min(self.rrf_weights) < 0 or sum(self.rrf_weights) == 0:
            raise ValueError("rrf_weights must be non-negative and not both zero")
        return self
