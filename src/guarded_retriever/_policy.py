"""The trust policy, and the provenance score it assigns to a batch.

``provenance_score ∈ [0, 1]`` (DESIGN.md) is the sum of three parts:

* 0.4 **domain**: the source host is on the allowlist (the host itself or a subdomain of an entry,
  compared after IDNA encoding, so ``docs.example.com`` matches ``example.com`` but
  ``example.com.evil.net`` and ``https://example.com@evil.net`` do not);
* 0.4 **signer**: a valid ed25519 signature by an allowlisted key;
* 0.2 **transport**: 0.1 for ``https``, and 0.1 more when the crawler declared HSTS on it.

A batch without a manifest scores 0, and an unsigned manifest can earn the domain and transport
parts but never the signer part. Everything the policy refuses raises; nothing is silently demoted.

A manifest is also refused outside its signed validity window or with a crawl time in the future
(:class:`ManifestReplayError`, allowing ``clock_skew_seconds``), and one of ``schema_rev`` 1 (no
namespace, batch or window signed) unless ``allow_legacy_manifests``. Which namespace a manifest
may go to is the ledger's check, at commit: the policy does not see the batch's namespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from ._config import SettingsModel
from ._exceptions import (
    ManifestError,
    ManifestReplayError,
    ManifestRequiredError,
    UntrustedSignerError,
    UntrustedSourceError,
)
from ._manifest import LEGACY_SCHEMA_REV, IngestManifest, SignedManifest

__all__ = ["Provenance", "TrustPolicy", "provenance_score"]

DOMAIN_WEIGHT = 0.4
SIGNER_WEIGHT = 0.4
TRANSPORT_WEIGHT = 0.2


def provenance_score(*, domain_trusted: bool, signed: bool, https: bool, hsts: bool) -> float:
    """The design's provenance formula (see the module docstring)."""
    transport = (0.5 if https else 0.0) + (0.5 if https and hsts else 0.0)
    return round(
        DOMAIN_WEIGHT * domain_trusted + SIGNER_WEIGHT * signed + TRANSPORT_WEIGHT * transport, 6
    )


def _host(url: str) -> tuple[str, str]:
    """``(scheme, idna_host)`` of a URL; raises :class:`UntrustedSourceError` when it has no host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise UntrustedSourceError(f"unparseable source_url {url!r}: {exc}") from None
    if not host:
        raise UntrustedSourceError(f"source_url {url!r} has no host")
    return parts.scheme.lower(), _idna(host.rstrip("."))


def source_domain(url: str | None) -> str:
    """The IDNA host of a source URL, or ``""`` when there is none (for grouping and filtering,
    where a malformed URL is just "no domain", not an error)."""
    if not url:
        return ""
    try:
        return _host(url)[1]
    except UntrustedSourceError:
        return ""


def _idna(host: str) -> str:
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise UntrustedSourceError(f"host {host!r} is not a valid IDNA name") from None


@dataclass(frozen=True, slots=True)
class Provenance:
    """What the policy concluded about one batch; every document of the batch shares it."""

    score: float
    manifest_id: str | None = None
    signer: str | None = None
    source_type: str | None = None
    source_url: str | None = None
    domain_trusted: bool = False
    signed: bool = False
    https: bool = False
    hsts: bool = False


UNKNOWN_PROVENANCE = Provenance(score=0.0)


class TrustPolicy(SettingsModel):
    """Which sources, schemes and signer keys to trust. The defaults fail closed."""

    manifest_required: bool = True
    """Refuse any batch that does not come with a valid signed manifest."""
    allowed_schemes: frozenset[str] = frozenset({"https"})
    """URL schemes a manifest's ``source_url`` may use; anything else is refused."""
    allowed_domains: frozenset[str] = frozenset()
    """Reputable domains (subdomains included): they earn the domain part of provenance."""
    trusted_signers: frozenset[str] = Field(default_factory=frozenset)
    """ed25519 public keys (64 hex digits) whose signatures are accepted."""
    reject_unlisted_domains: bool = False
    """Refuse, rather than merely score low, a source whose domain is not on the allowlist."""
    require_manifest_namespace: bool = False
    """Refuse a manifest that names no namespace, rather than bind it to the first namespace it
    is ingested into (which still refuses it in any other)."""
    allow_legacy_manifests: bool = False
    """Accept ``schema_rev`` 1 manifests (signed with no namespace, batch id or validity window),
    each bound to the first namespace it is ingested into. Off: re-sign them."""
    clock_skew_seconds: float = Field(300.0, ge=0.0, le=86_400.0)
    """How far the signer's clock may differ from this host's at the validity window's edges."""

    @field_validator("allowed_schemes")
    @classmethod
    def _lower_schemes(cls, v: frozenset[str]) -> frozenset[str]:
        return frozenset(s.lower() for s in v)

    @field_validator("allowed_domains")
    @classmethod
    def _idna_domains(cls, v: frozenset[str]) -> frozenset[str]:
        return frozenset(_idna(d.strip().rstrip(".")) for d in v)

    @field_validator("trusted_signers")
    @classmethod
    def _hex_keys(cls, v: frozenset[str]) -> frozenset[str]:
        for key in v:
            if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
                raise ValueError(f"signer key {key[:16]!r}... must be 64 lowercase hex digits")
        return v

    def _check_use(self, body: IngestManifest) -> None:
        """Whether the (verified) manifest may be used now; its namespace is the ledger's check."""
        if body.schema_rev == LEGACY_SCHEMA_REV:
            if not self.allow_legacy_manifests:
                raise ManifestError(
                    f"manifest {body.manifest_id} is schema_rev 1: it signs no namespace, batch id or "
                    "validity window, so any copy of it could be replayed. Re-sign the batch with "
                    "ManifestSigner.sign_texts(texts, source_type=..., source_url=..., namespace=...), "
                    "or accept it with TrustPolicy(allow_legacy_manifests=True)")
            return
        if body.namespace is None and self.require_manifest_namespace:
            raise ManifestReplayError(f"manifest {body.manifest_id} names no namespace, and this policy "
                                      "requires one: sign it with sign_texts(..., namespace=...)")
        body.check_window(datetime.now(UTC), timedelta(seconds=self.clock_skew_seconds))

    def domain_trusted(self, host: str) -> bool:
        return any(host == d or host.endswith("." + d) for d in self.allowed_domains)

    def vouch(self, manifest: SignedManifest | IngestManifest | Any | None) -> Provenance:
        """Check a batch's manifest against the policy and score its provenance.

        Args:
            manifest: a :class:`SignedManifest` (or its dict / JSON form), an unsigned
                :class:`IngestManifest`, or ``None``.

        Raises:
            ManifestRequiredError: no signed manifest, and the policy requires one.
            UntrustedSourceError: the source URL's scheme or domain is refused.
            UntrustedSignerError: the signer's key is not allowlisted.
            SignatureError: the signature does not verify.
            ManifestError: the manifest is malformed.
        """
        if manifest is None:
            if self.manifest_required:
                raise ManifestRequiredError("this trust policy requires a signed ingest manifest")
            return UNKNOWN_PROVENANCE
        if isinstance(manifest, IngestManifest):
            if self.manifest_required:
                raise ManifestRequiredError("the manifest is unsigned; this policy requires a signature")
            body, signed = manifest, False
        else:
            signed_manifest = SignedManifest.coerce(manifest)
            body = signed_manifest.manifest
            if body.signer not in self.trusted_signers:
                raise UntrustedSignerError(f"signer {body.signer[:16]}... is not on the allowlist")
            signed_manifest.verify()
            signed = True
        self._check_use(body)
        scheme, host = _host(body.source_url)
        if scheme not in self.allowed_schemes:
            raise UntrustedSourceError(
                f"scheme {scheme!r} is not allowed (allowed: {sorted(self.allowed_schemes)})"
            )
        trusted = self.domain_trusted(host)
        if self.reject_unlisted_domains and not trusted:
            raise UntrustedSourceError(f"domain {host!r} is not on the allowlist")
        https = scheme == "https"
        return Provenance(
            score=provenance_score(domain_trusted=trusted, signed=signed, https=https, hsts=body.hsts),
            manifest_id=body.manifest_id,
            signer=body.signer if signed else None,
            source_type=body.source_type,
            source_url=body.source_url,
            domain_trusted=trusted,
            signed=signed,
            https=https,
            hsts=body.hsts and https,
        )
