from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

import guarded_retriever as gr

NS_A = {"tenant_id": "acme", "product_id": "kb", "env": "prod"}
NS_B = {"tenant_id": "globex", "product_id": "kb", "env": "prod"}

CLEAN_TEXTS = [
    "To reset your password open Settings, choose Security and follow the emailed link.",
    "Invoices are issued on the first business day of each month and can be paid by card.",
    "The public API allows 600 requests per minute per organisation before throttling.",
]


@pytest.fixture
def signer() -> gr.ManifestSigner:
    return gr.ManifestSigner.from_seed(b"\x01" * 32)


@pytest.fixture
def policy(signer: gr.ManifestSigner) -> gr.TrustPolicy:
    return gr.TrustPolicy(trusted_signers={signer.public_key}, allowed_domains={"example.com"})


@pytest.fixture
def pipeline(policy: gr.TrustPolicy) -> gr.IngestPipeline:
    return gr.IngestPipeline(policy=policy)


def sign(signer: gr.ManifestSigner, texts: list[str], url: str = "https://docs.example.com/kb") -> gr.SignedManifest:
    return signer.sign_texts(texts, source_type="web", source_url=url, hsts=True)


# Hypothesis profiles of the bad-input fuzz tests (tests/test_fuzz.py); choose one with
# GR_FUZZ_PROFILE. Each fuzz test runs a multiple of the profile's max_examples: "fuzz-ci" adds up
# to 11,800 cases, derandomized so that CI is reproducible; "fuzz-nightly" explores 10x more.
settings.register_profile(
    "fuzz-ci",
    max_examples=1000,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile("fuzz-dev", settings.get_profile("fuzz-ci"), max_examples=100)
settings.register_profile("fuzz-nightly", settings.get_profile("fuzz-ci"), max_examples=10_000, derandomize=False)
