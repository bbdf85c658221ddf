"""``examples/multi_tenant.py`` runs as CI runs it (offline, warnings as errors): namespaces fail
closed, never leak into each other, freeze one at a time, and are metered one by one."""

from __future__ import annotations

import ast
import json
import runpy
from typing import Any

from ._examples import EXAMPLES, run_offline, value

EXAMPLE = EXAMPLES / "multi_tenant.py"


ACME_PROD = "tenant_id=acme|product_id=help|env=prod"
STAGING = "tenant_id=acme|product_id=help|env=staging"
GLOBEX = "tenant_id=globex|product_id=help|env=prod"



def test_the_example_runs_offline_and_prints_what_it_claims():
    out = run_offline(EXAMPLE.name)
    for label in ("no namespace", "missing env", "extra key", "empty tenant", "None tenant", "space in value",
                  "Cyrillic look-alike"):
        assert value(out, label) == "NamespaceError"
    assert ast.literal_eval(value(out, GLOBEX)) == ["reset", "payroll", "claims-acme"]
    assert ast.literal_eval(value(out, STAGING)) == ["reset"]
    assert value(out, "write to acme staging") == "NamespaceFrozenError"
    assert value(out, "write to acme prod") == "kept ['note']"
    assert ast.literal_eval(value(out, "frozen")) == [STAGING]
    frozen = [json.loads(ln.split("namespace.frozen ", 1)[1]) for ln in out.splitlines() if "namespace.frozen" in ln]
    assert frozen == [{"namespace": STAGING, "reason": "leaked test credentials"}]
    # acme help prod: its three articles plus the note written while staging was frozen.
    assert ast.literal_eval(value(out, f"metrics {ACME_PROD}")) == {"kept": 4, "quarantined": 1, "queries": 3}


def test_no_namespace_sees_another():
    example: dict[str, Any] = runpy.run_path(str(EXAMPLE), run_name="multi_tenant")
    result = example["main"]()
    assert len(result["refused"]) == 7 and set(result["refused"].values()) == {"NamespaceError"}
    corpus = example["CORPUS"]
    for (tenant, product, env), docs in corpus.items():
        key = f"tenant_id={tenant}|product_id={product}|env={env}"
        ids = {d[0] if isinstance(d, tuple) else d["id"] for d in docs}
        assert result["seen"][key] and set(result["seen"][key]) <= ids - {"inject"}
    # Only globex mentions Zenith; acme's answer holds none of globex's ids.
    assert not {"payroll", "claims-acme"} & set(result["payroll"])
    assert result["claims"] == [GLOBEX]  # metadata claiming acme did not move it
    assert result["frozen_error"] == "NamespaceFrozenError"
    assert result["metrics"][STAGING]["kept"] == 1  # the frozen write never landed
    assert result["metrics"][GLOBEX] == {"kept": 3, "quarantined": 0, "queries": 1}
    assert result["violations"] == 0


def test_every_hit_is_its_own_namespaces_text():
    # Ids repeat across namespaces ("reset" is in three): compare texts, which do not.
    example: dict[str, Any] = runpy.run_path(str(EXAMPLE), run_name="multi_tenant")
    index, _ = example["build"]()
    texts = {ns: {d[1] if isinstance(d, tuple) else d["text"] for d in docs} for ns, docs in example["CORPUS"].items()}
    for ns, own in texts.items():
        for query in ("How do I reset my password?", "Zenith payroll ledger", "invoice refund card"):
            result = index.search(query, namespace=example["ns"](*ns), k=10)
            assert result.kept and {h.text for h in result.kept} <= own
            assert not {h.text for h in result.quarantined} - own
