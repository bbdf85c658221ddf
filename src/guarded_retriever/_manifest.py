"""Signed ingest manifests: who vouches for a batch of documents, and for exactly which texts.

One manifest covers a batch: it lists the BLAKE2b-128 digest (the content hash the index keys on)
and an ``xxh64`` fingerprint of every document's canonical text, so the ed25519 signature is
verified once per batch, not once per document (≈70 µs each). Only the digest vouches for a text:
xxh64 is not collision resistant, and is listed for format compatibility only.

The signed bytes are a domain-separation tag followed by canonical JSON: UTF-8, sorted keys, no
insignificant whitespace, ``crawl_time`` as ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` in UTC. The tag keeps
a manifest signature from ever being replayed as a signature on anything else the package signs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
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
from ._exceptions import ManifestError, SignatureError
from ._fingerprint import content_digest, fingerprint64

__all__ = ["IngestManifest", "ManifestSigner", "SignedManifest"]

_SIGNING_CONTEXT = b"guarded-retriever/ingest-manifest/v1\n"
SCHEMA_REV = 1

_Hash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
_Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


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
    """The manifest format revision."""
    hsts: bool = False
    """Whether the crawler saw an HSTS policy on the source (declared, not verified here)."""

    @field_validator("crawl_time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("crawl_time must be timezone-aware")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _paired(self) -> Self:
        if len(self.content_hashes) != len(self.content_digests):
            raise ValueError("content_hashes and content_digests must have the same length")
        if self.schema_rev != SCHEMA_REV:
            raise ValueError(f"unsupported schema_rev {self.schema_rev}; this version reads {SCHEMA_REV}")
        return self

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
    ) -> IngestManifest:
        """Build the manifest for raw texts: canonicalises each and lists its hash and digest."""
        canon = [canonicalize(t) for t in texts]
        for i, c in enumerate(canon):
            try:
                c.encode("utf-8")
            except UnicodeEncodeError:
                raise ManifestError(f"text {i} contains a lone surrogate and cannot be hashed") from None
        return cls(
            source_type=source_type,
            source_url=source_url,
            crawl_time=crawl_time or datetime.now(UTC),
            signer=signer,
            content_hashes=tuple(fingerprint64(c) for c in canon),
            content_digests=tuple(content_digest(c) for c in canon),
            hsts=hsts,
        )

    def canonical_json(self) -> bytes:
        """The exact bytes that are signed (after the domain-separation tag)."""
        payload = {
            "content_digests": list(self.content_digests),
            "content_hashes": list(self.content_hashes),
            "crawl_time": self.crawl_time.isoformat().replace("+00:00", "Z"),
            "hsts": self.hsts,
            "schema_rev": self.schema_rev,
            "signer": self.signer,
            "source_type": self.source_type,
            "source_url": self.source_url,
        }
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
        ...                            source_url="https://docs.example.com/a")
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
    ) -> SignedManifest:
        """Build and sign the manifest for a batch of raw texts."""
        manifest = IngestManifest.for_texts(
            texts,
            source_type=source_type,
            source_url=source_url,
            signer=self.public_key,
            crawl_time=crawl_time,
            hsts=hsts,
        )
        return self.sign(manifest)
