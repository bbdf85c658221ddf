"""The incident-response example runs as CI runs it (offline, warnings as errors) and shows what it says."""

from __future__ import annotations

import ast
import json

from ._examples import EXAMPLES, listed, run_offline, value

EXAMPLE = EXAMPLES / "incident_response.py"





def events(out: str, name: str) -> list[dict]:
    prefix = f"  log: {name} "
    return [json.loads(ln.removeprefix(prefix)) for ln in out.splitlines() if ln.startswith(prefix)]


def test_the_incident_response_example():
    out = run_offline(EXAMPLE.name)

    # 1. the phishing page slipped in and ranks first; the injection was quarantined
    assert listed(out, "wiki batch kept") == ["wiki-tip", "wiki-phish"]
    assert listed(out, "wiki batch quarantined") == ["wiki-inject"]
    assert listed(out, "top hits for 'reset password'")[0] == "wiki-phish"
    batches = events(out, "ingest.batch")
    assert [b["quarantined"] for b in batches[:3]] == [0, 1, 0]
    assert batches[1]["reasons"] == ["injection", "instruction_override"] and batches[1]["domain"] == "wiki.example.com"

    # 2. detection leads from the injection to the rest of its crawl
    assert value(out, "detections by reason") == "{'injection': 1, 'instruction_override': 1}"
    assert value(out, "detections by domain") == "{'wiki.example.com': 1}"
    suspect = value(out, "suspect")
    assert suspect.startswith("wiki-inject (quarantine) from manifest ")
    manifest_id = suspect.rsplit(" ", 1)[1]
    assert len(manifest_id) == 32
    assert listed(out, "same manifest") == [("wiki-inject", "quarantine"), ("wiki-tip", "main"),
                                            ("wiki-phish", "main")]
    assert set(listed(out, "same domain")) == {"wiki-inject", "wiki-tip", "wiki-phish"}

    # 3. freeze: writes refused, reads and the other tenant unaffected
    assert value(out, "write refused") == "NamespaceFrozenError"
    assert listed(out, "reads go on")[0] == "wiki-phish"
    assert listed(out, "globex still takes writes") == ["gx-note"]
    assert events(out, "namespace.frozen")[0]["reason"] == "compromised wiki crawl"

    # 4. the revocation and its report
    assert listed(out, "removed") == ["wiki-inject", "wiki-phish", "wiki-tip"]
    neighbours = listed(out, "neighbours to review")
    assert neighbours and all(n.startswith("kb-") for n in neighbours)
    assert value(out, "re-embedded").startswith(f"{len(neighbours)}, purge took ")
    tops = [ast.literal_eval(ln.split(": ", 1)[1]) for ln in out.splitlines()
            if ln.startswith("top hits for 'reset password': ")]
    assert len(tops) == 2 and tops[0][0] == "wiki-phish" and not {"wiki-phish", "wiki-tip"} & set(tops[1])
    assert listed(out, "suspects left from wiki.example.com") == []
    (manifest_event, hash_event) = events(out, "revocation")
    assert manifest_event["kind"] == "manifest" and manifest_event["value"] == manifest_id
    assert manifest_event["removed"] == 3 and manifest_event["neighbours"] == len(neighbours)
    assert hash_event["kind"] == "content_hash" and hash_event["removed"] == 0

    # 5. refused from now on, verified, saved, reloaded, tamper-evident
    assert value(out, "re-ingest (old manifest) refused") == "RevokedContentError"
    assert value(out, "re-ingest (re-signed) refused") == "RevokedContentError"
    assert value(out, "verify passed") == "True (coverage 1.00)"
    assert {"MANIFEST.json", "MANIFEST.sig", "index.json", "ledger.sqlite"} <= set(listed(out, "saved"))
    assert value(out, "reloaded, same results") == "True"
    assert value(out, "still revoked after reload") == "True"
    assert value(out, "revocations") == "2, frozen: []"
    assert value(out, "tampered copy refused") == "IntegrityError"
    assert value(out, "wrong key refused") == "UntrustedSignerError"

    # 6. the command line agrees
    cli = [ln for ln in out.splitlines() if ln.startswith("$ guarded-retriever ")]
    assert cli[0].endswith("metrics acme-help ... -> exit 0: revocations 2, frozen []")
    assert cli[1].endswith("verify acme-help ... -> exit 0: passed True")
    assert "metrics tampered ... -> exit 2: error: IntegrityError: " in cli[2]
    assert "has been modified or truncated" in cli[2]
