"""``examples/sign_crawl_manifests.py`` runs as CI runs it (offline, warnings as errors): signed crawl
batches land with their provenance, and every forged or untrusted batch is refused without a trace."""

from __future__ import annotations

import ast
import runpy
from typing import Any

from ._examples import EXAMPLES, run_offline, value

EXAMPLE = EXAMPLES / "sign_crawl_manifests.py"


REFUSED = {
    "page edited after signing": "ContentHashMismatch",
    "manifest edited": "SignatureError",
    "truncated signature": "SignatureError",
    "unknown signer": "UntrustedSignerError",
    "plain http": "UntrustedSourceError",
    "signed for another namespace": "ManifestReplayError",
    "unsigned manifest": "ManifestRequiredError",
    "no manifest": "ManifestRequiredError",
}



def test_the_example_runs_offline_and_prints_what_it_claims():
    out = run_offline(EXAMPLE.name)
    assert value(out, "https://blog.acme.example/tips") == "kept ['blog-sso'], quarantined ['blog-evil']"
    assert ast.literal_eval(value(out, "provenance")) == {
        "sec-reset": 1.0, "sec-2fa": 1.0, "blog-sso": 1.0, "blog-evil": 1.0, "partner-reset": 0.5}
    for label, error in REFUSED.items():
        assert value(out, label) == error
    assert value(out, "ledger and index unchanged") == "True"
    assert ast.literal_eval(value(out, "ranking"))[0] == ("sec-reset", 1.0)


def test_provenance_and_refusals():
    example: dict[str, Any] = runpy.run_path(str(EXAMPLE), run_name="sign_crawl_manifests")
    result = example["main"]()
    assert result["refused"] == REFUSED and result["unchanged"] is True
    assert result["quarantined"] == ["blog-evil"]  # signed, yet poisoned: a signature vouches for origin only
    # Off the allowlist and without HSTS: signer 0.4 + https 0.1. On the list with HSTS: 1.0.
    assert result["provenance"]["partner-reset"] == 0.5 and result["provenance"]["sec-reset"] == 1.0
    # The provenance weight is what puts the signed docs page ahead of the partner's page.
    assert [i for i, _ in result["ranking"][:2]] == ["sec-reset", "partner-reset"]
    assert [i for i, _ in result["without"][:2]] == ["partner-reset", "sec-reset"]
