"""guarded_retriever: keep poisoned, untrusted or out-of-tenant text away from your LLM.

The core is framework-free. LangChain and LlamaIndex adapters live in
``guarded_retriever.langchain`` and ``guarded_retriever.llamaindex`` behind extras.
"""

from __future__ import annotations

from ._canonical import canonicalize, tokenize
from ._config import FusionWeights, GuardConfig
from ._exceptions import (
    ConfigError,
    ContentHashMismatch,
    ContractError,
    DocumentError,
    EmbeddingError,
    GuardedRetrieverError,
    IntegrityError,
    LedgerError,
    ManifestError,
    ManifestRequiredError,
    MissingExtraError,
    NamespaceError,
    NamespaceFrozenError,
    NamespaceViolation,
    RevokedContentError,
    SignatureError,
    UntrustedSignerError,
    UntrustedSourceError,
)
from ._fingerprint import content_digest, content_hash, hamming, simhash64, simhash64_batch
from ._ingest import GuardDocument, IngestPipeline, PreparedBatch, PreparedDocument
from ._ledger import Ledger, LedgerRecord
from ._manifest import IngestManifest, ManifestSigner, SignedManifest
from ._namespace import Namespace, NamespaceSchema
from ._poison import FEATURES, PoisonModel, threshold_at_fpr
from ._policy import Provenance, TrustPolicy, provenance_score

__version__ = "0.1.0"

__all__ = [
    "FEATURES",
    "ConfigError",
    "ContentHashMismatch",
    "ContractError",
    "DocumentError",
    "EmbeddingError",
    "FusionWeights",
    "GuardConfig",
    "GuardDocument",
    "GuardedRetrieverError",
    "IngestManifest",
    "IngestPipeline",
    "IntegrityError",
    "Ledger",
    "LedgerError",
    "LedgerRecord",
    "ManifestError",
    "ManifestRequiredError",
    "ManifestSigner",
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
    "RevokedContentError",
    "SignatureError",
    "SignedManifest",
    "TrustPolicy",
    "UntrustedSignerError",
    "UntrustedSourceError",
    "__version__",
    "canonicalize",
    "content_digest",
    "content_hash",
    "hamming",
    "provenance_score",
    "simhash64",
    "simhash64_batch",
    "threshold_at_fpr",
    "tokenize",
]
