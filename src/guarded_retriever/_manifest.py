"""Signed ingest manifests: who vouches for a batch of documents, and for exactly which texts.

One manifest covers a batch: it lists the BLAKE2b-128 digest (the content hash the index keys on)
and an ``xxh64`` fingerprint of every document's canonical text, so the ed25519 signature is
verified once per batch, not once per document (≈70 µs each). Only the digest vouches for a text:
xxh64 is not collision resistant, and is listed for format compatibility only.

The signed bytes are a domain-separation tag followed by canonical JSON: UTF-8, sorted keys, no
insignificant whitespace, times as ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` in UTC. The tag keeps a
manifest signature from ever being replayed as a signature on anything else the package signs.

A manifest (``schema_rev`` 2) also signs where and when it may be used, so a copy cannot be
replayed elsewhere: the ``namespace`` it is meant for (its key with the keys sorted; ``None``
binds it to the first namespace it is ingested into), a ``batch_id`` (random unless given, so two
crawls of the same texts are two manifests) and a validity window ``not_before`` … ``not_after``
(30 days from signing by default, at most 366), and the crawl time may lie at most 366 days before
the window opens. The trust policy refuses a manifest outside its window or crawled in the future;
the ledger refuses one already ingested into another namespace (:class:`ManifestReplayError`).
Manifests of ``schema_rev`` 1 (signed before, with none of these) still parse and verify, but the
policy refuses them unless told ``allow_legacy_manifests=True``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Self

import nacl.exceptions
import nacl.signing
import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from ._canonical import canonicalize
from ._exceptions import ManifestError, ManifestReplayError, SignatureError
from ._fingerprint import content_digest, fingerprint64
from ._namespace import Namespace, audience

__all__ = ["IngestManifest", "ManifestSigner", "SignedManifest"]

_SIGNING_CONTEXT = b"guarded-retriever/ingest-manifest/v1\n"
SCHEMA_REV = 2
LEGACY_SCHEMA_REV = 1
"""Signed before manifests named a namespace, a batch and a validity window (still verifiable)."""
DEFAULT_VALIDITY = timedelta(days=30)
MAX_VALIDITY = timedelta(days=366)
"""The longest validity window a manifest may sign, and how long before it the crawl may be."""

_Hash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
_Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
_BatchId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")]


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class _ManifestModel(BaseModel):
    """Frozen, closed model whose validation errors are :class:`ManifestError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ManifestError(f"invalid {type(self).__name__}: {exc}") from None


class IngestManifest(_ManifestModel):
    """What a crawler or an ingest job declares about one batch of documents."""

    source_type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    """The channel the batch came by: ``web``, ``wiki``, ``email``, ``upload``, ..."""
    source_url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    """Where the batch was fetched from; its scheme and host feed the trust policy."""
    crawl_time: datetime
    """When the batch was fetched (timezone-aware; stored in UTC)."""
    signer: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    """The signer's ed25519 public key, 64 lowercase hex digits."""
    content_hashes: tuple[_Hash, ...] = Field(min_length=1)
    """``xxh64`` fingerprints of each document's canonical text (listed, never trusted)."""
    content_digests: tuple[_Digest, ...] = Field(min_length=1)
    """BLAKE2b-128 of each document's canonical text (its content hash in the index), in the same
    order as ``content_hashes``."""
    schema_rev: int = SCHEMA_REV
    """The manifest format revision (1: signed without namespace, batch id and window)."""
    hsts: bool = False
    """Whether the crawler saw an HSTS policy on the source (declared, not verified here)."""
    namespace: str | None = None
    """The namespace the batch is for, as its key with the keys sorted (see ``audience``);
    ``None``: the first namespace it is ingested into."""
    batch_id: _BatchId | None = None
    """The crawl batch this manifest covers (required from ``schema_rev`` 2)."""
    not_before: datetime | None = None
    """The manifest is refused before this time (required from ``schema_rev`` 2)."""
    not_after: datetime | None = None
    """The manifest is refused after this time (required from ``schema_rev`` 2)."""

    @field_validator("crawl_time", "not_before", "not_after")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("crawl_time, not_before and not_after must be timezone-aware")
        return value.astimezone(UTC)

    @field_validator("namespace", mode="before")
    @classmethod
    def _audience(cls, value: Any) -> Any:
        return None if value is None else audience(value)

    @model_validator(mode="after")
    def _paired(self) -> Self:
        if len(self.content_hashes) != len(self.content_digests):
            raise ValueError("content_hashes and content_digests must have the same length")
        bound = (self.namespace, self.batch_id, self.not_before, self.not_after)
        if self.schema_rev == LEGACY_SCHEMA_REV:
            if any(v is not None for v in bound):
                raise ValueError("a schema_rev 1 manifest has no namespace, batch_id or validity window")
            return self
        if self.schema_rev != SCHEMA_REV:
            raise ValueError(f"unsupported schema_rev {self.schema_rev}; this version reads {SCHEMA_REV}")
        if self.batch_id is None or self.not_before is None or self.not_after is None:
            raise ValueError("batch_id, not_before and not_after are required (sign it with "
                             "ManifestSigner.sign_texts, which fills them in)")
        if not self.not_before < self.not_after <= self.not_before + MAX_VALIDITY:
            raise ValueError(f"the validity window must be non-empty and at most {MAX_VALIDITY.days} days")
        # A crawl time outside these bounds is a declaration no window can make sane: one after
        # the window closed, or one so old that the window would vouch for stale pages.
        if not self.not_before - MAX_VALIDITY <= self.crawl_time <= self.not_after:
            raise ValueError(f"crawl_time must lie before not_after and at most {MAX_VALIDITY.days} days "
                             "before not_before: re-crawl, or sign with an earlier not_before")
        return self

    def check_window(self, now: datetime, skew: timedelta) -> None:
        """Refuse the manifest outside its validity window, or with a crawl time in the future
        (both allowing ``skew`` of clock difference between the signer and this host).

        Raises:
            ManifestReplayError: ``now`` is outside the window or before the crawl time.
        """
        if self.not_before is None or self.not_after is None:
            return  # schema_rev 1: the policy decides whether to accept it at all
        if now + skew < self.not_before:
            raise ManifestReplayError(f"manifest {self.manifest_id} is not valid before {_iso(self.not_before)}")
        if now - skew > self.not_after:
            raise ManifestReplayError(f"manifest {self.manifest_id} expired at {_iso(self.not_after)}: "
                                      "re-sign the batch (a replayed old manifest is refused)")
        if self.crawl_time > now + skew:
            raise ManifestReplayError(f"manifest {self.manifest_id} has a crawl time in the future "
                                      f"({_iso(self.crawl_time)})")

    @classmethod
    def for_texts(
        cls,
        texts: Iterable[str],
        *,
        source_type: str,
        source_url: str,
        signer: str,
        crawl_time: datetime | None = None,
        hsts: bool = False,
        namespace: Namespace | Mapping[str, str] | str | None = None,
        batch_id: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        valid_for: timedelta = DEFAULT_VALIDITY,
    ) -> IngestManifest:
        """Build the manifest for raw texts: canonicalises each and lists its hash and digest.

        Args:
            namespace: the namespace the batch is for; ``None`` binds the manifest to the first
                namespace it is ingested into.
            batch_id: the crawl batch's id (a random one by default).
            not_before, not_after: the validity window; by default from now for ``valid_for``.
        """
        if isinstance(texts, str | bytes | Mapping) or not isinstance(texts, Iterable):
            raise ManifestError(f"texts must be an iterable of str, got {type(texts).__name__}")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ManifestError(f"text {i} must be str, got {type(t).__name__}")
        canon = [canonicalize(t) for t in texts]
        for i, c in enumerate(canon):
            try:
                c.encode("utf-8")
            except UnicodeEncodeError:
                raise ManifestError(f"text {i} contains a lone surrogate and cannot be hashed") from None
        if not isinstance(valid_for, timedelta):
            raise ManifestError(f"valid_for must be a timedelta, got {type(valid_for).__name__}")
        now = datetime.now(UTC)
        start = not_before if not_before is not None else now
        try:
            end = not_after if not_after is not None else start + valid_for
        except TypeError:
            raise ManifestError("not_before must be a timezone-aware datetime") from None
        return cls(
            source_type=source_type,
            source_url=source_url,
            crawl_time=crawl_time or now,
            signer=signer,
            content_hashes=tuple(fingerprint64(c) for c in canon),
            content_digests=tuple(content_digest(c) for c in canon),
            hsts=hsts,
            namespace=namespace,
            batch_id=batch_id if batch_id is not None else uuid.uuid4().hex,
            not_before=start,
            not_after=end,
        )

    def canonical_json(self) -> bytes:
        """The exact bytes that are signed (after the domain-separation tag)."""
        payload: dict[str, Any] = {
            "content_digests": list(self.content_digests),
            "content_hashes": list(self.content_hashes),
            "crawl_time": _iso(self.crawl_time),
            "hsts": self.hsts,
            "schema_rev": self.schema_rev,
            "signer": self.signer,
            "source_type": self.source_type,
            "source_url": self.source_url,
        }
        if self.not_before is not None and self.not_after is not None:  # schema_rev 1 signed none
            payload.update(namespace=self.namespace, batch_id=self.batch_id,
                           not_before=_iso(self.not_before), not_after=_iso(self.not_after))
        return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)

    @property
    def manifest_id(self) -> str:
        """A stable id: BLAKE2b-128 of the canonical JSON, as 32 hex digits."""
        return hashlib.blake2b(self.canonical_json(), digest_size=16).hexdigest()

    def vouches_for(self) -> frozenset[str]:
        """The content hashes (BLAKE2b digests) of every text this manifest lists."""
        return frozenset(self.content_digests)


class SignedManifest(_ManifestModel):
    """An :class:`IngestManifest` with its detached ed25519 signature (128 hex digits)."""

    manifest: IngestManifest
    signature: str

    @property
    def manifest_id(self) -> str:
        return self.manifest.manifest_id

    def verify(self) -> None:
        """Check the signature against the key named in ``manifest.signer``.

        Whether that key is *trusted* is the trust policy's question, not this one's.

        Raises:
            SignatureError: if the signature is malformed, truncated or does not verify.
        """
        try:
            sig = bytes.fromhex(self.signature)
        except ValueError:
            raise SignatureError("signature is not hex") from None
        if len(sig) != 64:
            raise SignatureError(f"signature must be 64 bytes, got {len(sig)} (truncated?)")
        try:
            key = nacl.signing.VerifyKey(bytes.fromhex(self.manifest.signer))
            key.verify(_SIGNING_CONTEXT + self.manifest.canonical_json(), sig)
        except (nacl.exceptions.CryptoError, ValueError):
            raise SignatureError(
                f"manifest {self.manifest_id} signature does not verify (tampered or wrong key)"
            ) from None

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"manifest": orjson.loads(self.manifest.canonical_json()), "signature": self.signature},
            option=orjson.OPT_SORT_KEYS,
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> SignedManifest:
        """Parse a signed manifest (does not verify it).

        Raises:
            ManifestError: if the JSON is malformed or misses a field.
        """
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise ManifestError(f"malformed signed manifest: {exc.error_count()} error(s): {exc}") from None

    @classmethod
    def coerce(cls, value: Any) -> SignedManifest:
        """Accept a :class:`SignedManifest`, its dict form or its JSON; raise :class:`ManifestError`."""
        if isinstance(value, SignedManifest):
            return value
        if isinstance(value, bytes | str):
            return cls.from_json(value)
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            raise ManifestError(f"malformed signed manifest: {exc}") from None


class ManifestSigner:
    """Holds an ed25519 signing key and signs manifests with it.

    Example:
        >>> signer = ManifestSigner.generate()
        >>> signed = signer.sign_texts(["some text"], source_type="web",
        ...                            source_url="https://docs.example.com/a",
        ...                            namespace={"tenant_id": "acme", "product_id": "kb", "env": "prod"})
        >>> signed.verify()
    """

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._key = signing_key

    @classmethod
    def generate(cls) -> ManifestSigner:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> ManifestSigner:
        """A signer from a 32-byte seed (keep it secret: it *is* the private key)."""
        if len(seed) != 32:
            raise ManifestError("an ed25519 seed is 32 bytes")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def public_key(self) -> str:
        """The verify key as 64 hex digits: put this on the trust policy's allowlist."""
        return bytes(self._key.verify_key).hex()

    def sign_bytes(self, message: bytes) -> bytes:
        """A detached ed25519 signature of ``message`` (callers prepend their own context tag)."""
        return bytes(self._key.sign(message).signature)

    def sign(self, manifest: IngestManifest) -> SignedManifest:
        if manifest.signer != self.public_key:
            raise ManifestError("manifest.signer names a different key than the one signing it")
        sig = self._key.sign(_SIGNING_CONTEXT + manifest.canonical_json()).signature
        return SignedManifest(manifest=manifest, signature=sig.hex())

    def sign_texts(
        self,
        texts: Iterable[str],
        *,
        source_type: str,
        source_url: str,
        crawl_time: datetime | None = None,
        hsts: bool = False,
        namespace: Namespace | Mapping[str, str] | str | None = None,
        batch_id: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        valid_for: timedelta = DEFAULT_VALIDITY,
    ) -> SignedManifest:
        """Build and sign the manifest for a batch of raw texts (see :meth:`IngestManifest.for_texts`;
        pass ``namespace`` so that the manifest is refused anywhere else)."""
        manifest = IngestManifest.for_texts(
            texts,
            source_type=source_type,
            source_url=source_url,
            signer=self.public_key,
            crawl_time=crawl_time,
            hsts=hsts,
            namespace=namespace,
            batch_id=batch_id,
            not_before=not_before,
            not_after=not_after,
            valid_for=valid_for,
        )
        return self.sign(manifest)
