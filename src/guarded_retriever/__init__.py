"""guarded_retriever: keep poisoned, untrusted or out-of-tenant text away from your LLM.

The core is framework-free. LangChain and LlamaIndex adapters live in
``guarded_retriever.langchain`` and ``guarded_retriever.llamaindex`` behind extras.
"""

from __future__ import annotations

from ._canonical import canonicalize, tokenize
from ._config import FusionWeights, GuardConfig
from ._contract import (
    CITE_THEN_EXPLAIN_PROMPT,
    contract_schema,
    delta_s,
    lambda_state,
    render_prompt,
    validate_contract,
)
from ._embed import Embedder, HashingEmbedder, MiniLMEmbedder, as_embedder
from ._exceptions import (
    ConfigError,
    ContentHashMismatch,
    ContractError,
    DocumentError,
    EmbeddingError,
    GuardedRetrieverError,
    IndexFormatError,
    IntegrityError,
    LedgerError,
    ManifestError,
    ManifestReplayError,
    ManifestRequiredError,
    MissingExtraError,
    NamespaceError,
    NamespaceFrozenError,
    NamespaceViolation,
    QueryError,
    RevokedContentError,
    RollbackError,
    SaveError,
    SignatureError,
    UntrustedSignerError,
    UntrustedSourceError,
)
from ._fingerprint import content_digest, content_hash, fingerprint64, hamming, simhash64, simhash64_batch
from ._fusion import dedupe, linear_fusion, max_normalize, minmax_normalize, weighted_rrf
from ._index import GuardedIndex, Hit, IngestReport, SearchResult
from ._ingest import GuardDocument, IngestPipeline, Judge, PreparedBatch, PreparedDocument
from ._ledger import Ledger, LedgerRecord
from ._manifest import IngestManifest, ManifestSigner, SignedManifest
from ._namespace import Namespace, NamespaceSchema
from ._poison import FEATURES, INGEST_FEATURES, QUERY_FEATURES, PoisonModel, document_features, threshold_at_fpr
from ._policy import Provenance, TrustPolicy, provenance_score

__version__ = "0.1.0"

__all__ = [
    "CITE_THEN_EXPLAIN_PROMPT",
    "FEATURES",
    "INGEST_FEATURES",
    "QUERY_FEATURES",
    "ConfigError",
    "ContentHashMismatch",
    "ContractError",
    "DocumentError",
    "Embedder",
    "EmbeddingError",
    "FusionWeights",
    "GuardConfig",
    "GuardDocument",
    "GuardedIndex",
    "GuardedRetrieverError",
    "HashingEmbedder",
    "Hit",
    "IndexFormatError",
    "IngestManifest",
    "IngestPipeline",
    "IngestReport",
    "IntegrityError",
    "Judge",
    "Ledger",
    "LedgerError",
    "LedgerRecord",
    "ManifestError",
    "ManifestReplayError",
    "ManifestRequiredError",
    "ManifestSigner",
    "MiniLMEmbedder",
    "MissingExtraError",
    "Namespace",
    "NamespaceError",
    "NamespaceFrozenError",
    "NamespaceSchema",
    "NamespaceViolation",
    "PoisonModel",
    "PreparedBatch",
    "PreparedDocument",
    "Provenance",
    "QueryError",
    "RevokedContentError",
    "RollbackError",
    "SaveError",
    "SearchResult",
    "SignatureError",
    "SignedManifest",
    "TrustPolicy",
    "UntrustedSignerError",
    "UntrustedSourceError",
    "__version__",
    "as_embedder",
    "canonicalize",
    "content_digest",
    "content_hash",
    "contract_schema",
    "dedupe",
    "delta_s",
    "document_features",
    "fingerprint64",
    "hamming",
    "lambda_state",
    "linear_fusion",
    "max_normalize",
    "minmax_normalize",
    "provenance_score",
    "render_prompt",
    "simhash64",
    "simhash64_batch",
    "threshold_at_fpr",
    "tokenize",
    "validate_contract",
    "weighted_rrf",
]
