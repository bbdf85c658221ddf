"""The one exception tree of ``guarded_retriever``.

Every error the package raises on purpose derives from :class:`GuardedRetrieverError`, so a caller
can catch the whole family at once. Errors about bad input also derive from :class:`ValueError`
(or :class:`LookupError`), the built-ins callers already catch::

    GuardedRetrieverError
    ├── ConfigError(ValueError)              invalid configuration or weights
    │   └── QueryError                       a query that cannot be served (type, length, surrogates)
    ├── NamespaceError(ValueError)           a missing, malformed or foreign namespace (fails closed)
    │   └── NamespaceViolation               a hit from another namespace reached the exit (strict mode)
    ├── NamespaceFrozenError                 writes to a frozen namespace
    ├── DocumentError(ValueError)            a document that cannot be ingested (empty, wrong type, ...)
    │   └── RevokedContentError              its content hash or manifest was revoked
    ├── ManifestError(ValueError)            the ingest manifest does not vouch for the batch
    │   ├── ManifestRequiredError            no signed manifest where the policy requires one
    │   ├── SignatureError                   a bad, truncated or tampered ed25519 signature
    │   ├── UntrustedSignerError             a valid signature by a key that is not allowlisted
    │   ├── UntrustedSourceError             a scheme or domain the trust policy refuses
    │   ├── ContentHashMismatch              a document whose text the manifest does not list
    │   └── ManifestReplayError              a manifest used outside its namespace or validity window
    ├── EmbeddingError(ValueError)           an embedder returned NaN/inf or the wrong dimension
    ├── ContractError(ValueError)            a contract payload that fails its JSON Schema
    ├── IntegrityError(ValueError)           persisted state that fails its checksums or signature
    │   ├── IndexFormatError                 a saved index of a format this version does not read
    │   └── RollbackError                    a saved index older than the generation required
    ├── LedgerError                          the ledger could not record a batch (nothing was kept)
    ├── SaveError(OSError)                   a save the storage refused (disk full, read-only, ...)
    └── MissingExtraError(ImportError)       an optional extra is not installed

A rejected batch never leaves a trace: the pipeline validates everything before it writes, and the
ledger and the indexes change together or not at all.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ContentHashMismatch",
    "ContractError",
    "DocumentError",
    "EmbeddingError",
    "GuardedRetrieverError",
    "IndexFormatError",
    "IntegrityError",
    "LedgerError",
    "ManifestError",
    "ManifestReplayError",
    "ManifestRequiredError",
    "MissingExtraError",
    "NamespaceError",
    "NamespaceFrozenError",
    "NamespaceViolation",
    "QueryError",
    "RevokedContentError",
    "RollbackError",
    "SaveError",
    "SignatureError",
    "UntrustedSignerError",
    "UntrustedSourceError",
]


class GuardedRetrieverError(Exception):
    """Base class of every error raised by ``guarded_retriever``."""


class ConfigError(GuardedRetrieverError, ValueError):
    """A configuration value is out of range or inconsistent."""


class QueryError(ConfigError):
    """A query that cannot be served: not a ``str``, longer than ``GuardConfig.max_query_chars``,
    or holding a lone surrogate. A :class:`ConfigError`, as bad queries were before it existed."""


class NamespaceError(GuardedRetrieverError, ValueError):
    """A namespace is missing, malformed, or does not match the request's."""


class NamespaceViolation(NamespaceError):
    """A hit from a foreign namespace reached the exit check (raised only in strict mode).

    Attributes:
        expected: the request's namespace key.
        found: the offending hit's namespace key.
        doc_id: the offending hit's id.
    """

    def __init__(self, expected: str, found: str, doc_id: str) -> None:
        super().__init__(f"hit {doc_id!r} belongs to {found!r}, not to the request's {expected!r}")
        self.expected = expected
        self.found = found
        self.doc_id = doc_id


class NamespaceFrozenError(GuardedRetrieverError):
    """The namespace is frozen: it accepts no writes until it is unfrozen."""


class DocumentError(GuardedRetrieverError, ValueError):
    """A document cannot be ingested. ``doc_id`` names it when it is known."""

    def __init__(self, message: str, *, doc_id: str | None = None) -> None:
        super().__init__(message if doc_id is None else f"document {doc_id!r}: {message}")
        self.doc_id = doc_id


class RevokedContentError(DocumentError):
    """The document's content hash, or the manifest that carries it, has been revoked."""


class ManifestError(GuardedRetrieverError, ValueError):
    """The ingest manifest is missing, malformed, or does not vouch for the documents."""


class ManifestRequiredError(ManifestError):
    """The trust policy requires a signed manifest and none was given."""


class SignatureError(ManifestError):
    """The manifest's ed25519 signature is malformed, truncated or does not verify."""


class UntrustedSignerError(ManifestError):
    """The signature verifies, but the signer's key is not on the policy's allowlist."""


class UntrustedSourceError(ManifestError):
    """The manifest's source URL uses a scheme or domain that the policy refuses."""


class ContentHashMismatch(ManifestError):
    """A document's canonical text does not hash to any content hash the manifest lists."""

    def __init__(self, message: str, *, doc_id: str | None = None) -> None:
        super().__init__(message if doc_id is None else f"document {doc_id!r}: {message}")
        self.doc_id = doc_id


class ManifestReplayError(ManifestError):
    """A validly signed manifest used where it was not signed for: another namespace than the one
    it names (or was first ingested into), or outside its ``not_before`` / ``not_after`` window, or
    with a crawl time in the future. Sign one manifest per namespace and batch, when it is sent."""


class EmbeddingError(GuardedRetrieverError, ValueError):
    """An embedder returned vectors of the wrong shape, or with NaN or infinite values."""


class ContractError(GuardedRetrieverError, ValueError):
    """A cite-then-explain payload does not validate against the shipped JSON Schema."""


class IntegrityError(GuardedRetrieverError, ValueError):
    """Persisted state failed its checksum or signature check; nothing was loaded."""


class IndexFormatError(IntegrityError):
    """A saved index written in a format this version refuses (the message says how to migrate)."""


class RollbackError(IntegrityError):
    """A validly signed saved index whose generation is older than (or not) the one required.

    Attributes:
        generation: the saved index's generation.
        required: the minimum or exact generation the caller asked for.
    """

    def __init__(self, message: str, *, generation: int, required: int) -> None:
        super().__init__(message)
        self.generation = generation
        self.required = required


class LedgerError(GuardedRetrieverError):
    """The ledger could not record a batch; the transaction was rolled back."""


class SaveError(GuardedRetrieverError, OSError):
    """The storage refused a save (disk full, read-only, permissions); nothing was left at the
    destination. Also an :class:`OSError`, as the failure was before it existed."""


class MissingExtraError(GuardedRetrieverError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"{module!r} is not installed; install it with: pip install 'guarded-retriever[{extra}]'",
            name=module,
        )
        self.extra = extra
