"""Check the look-alike sets: schema, unique ids, counts, payloads, groups and vectors.

    .venv/bin/python benchmarks/lookalikes/validate.py

Exits non-zero with a list of problems; prints the counts per kind and style otherwise.
"""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = ("faq", "product_variant", "code_tutorial", "readme", "security_article", "support_macro",
         "runbook", "non_english", "chat_prompt_doc")
STYLES = ("addressed_note", "summary_request", "french", "german", "spanish", "chinese", "html_comment",
          "alt_text", "base64", "leetspeak", "split", "long_tail", "fake_delimiter", "exfil_link",
          "homoglyph", "polite_task")


def load(name: str) -> list[dict]:
    with (HERE / name).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def words(text: str) -> int:
    """Whitespace words, with CJK characters counted two to a word."""
    cjk = len(re.findall(r"[\u3040-\u30ff\u4e00-\u9fff]", text))
    return len(text.split()) + cjk // 2


def main() -> int:
    bad: list[str] = []
    benign, evasive = load("benign.jsonl"), load("evasive.jsonl")
    queries, background = load("faq_queries.jsonl"), load("background.jsonl")
    ids = [r["id"] for r in benign + evasive + queries + background]
    dup = [i for i, n in collections.Counter(ids).items() if n > 1]
    if dup:
        bad.append(f"duplicate ids: {dup}")

    for r in benign:
        if set(r) != {"id", "kind", "text", "group"}:
            bad.append(f"{r['id']}: keys {sorted(r)}")
        if r["kind"] not in KINDS:
            bad.append(f"{r['id']}: unknown kind {r['kind']}")
        if not 40 <= words(r["text"]) <= 400:
            bad.append(f"{r['id']}: {words(r['text'])} words")
        if (r["kind"] == "product_variant") != (r["group"] is not None):
            bad.append(f"{r['id']}: group {r['group']!r} for kind {r['kind']}")
    kinds = collections.Counter(r["kind"] for r in benign)
    bad += [f"kind {k}: {kinds[k]} < 30" for k in KINDS if kinds[k] < 30]

    groups = collections.defaultdict(list)
    for r in benign:
        if r["group"]:
            groups[r["group"]].append(r["text"])
    for g, texts in groups.items():
        if not 3 <= len(texts) <= 6:
            bad.append(f"group {g}: {len(texts)} variants")
        tails = {t[-200:] for t in texts}  # the shared Q&A/shipping block closes every variant
        if len(tails) != 1:
            bad.append(f"group {g}: variants do not share one block")

    by_id = {r["id"]: r for r in benign}
    for q in queries:
        if set(q) != {"id", "text", "relevant"} or not q["relevant"]:
            bad.append(f"{q['id']}: bad query record")
        for d in q["relevant"]:
            if d not in by_id or by_id[d]["kind"] != "faq":
                bad.append(f"{q['id']}: relevant {d} is not a faq page")
    if len(queries) < 40:
        bad.append(f"{len(queries)} faq queries < 40")
    faq_ids = {r["id"] for r in benign if r["kind"] == "faq"}
    asked = {d for q in queries for d in q["relevant"]}
    if faq_ids - asked:
        bad.append(f"faq pages without a query: {sorted(faq_ids - asked)}")
    verbatim = sum(any(q["text"] in by_id[d]["text"] for d in q["relevant"]) for q in queries)

    for r in evasive:
        if not {"id", "style", "text", "payload"} <= set(r):
            bad.append(f"{r['id']}: keys {sorted(r)}")
        if r["style"] not in STYLES:
            bad.append(f"{r['id']}: unknown style {r['style']}")
        if r["payload"] not in r["text"] or not r["payload"].strip():
            bad.append(f"{r['id']}: payload is not a substring of text")
        if r["style"] == "long_tail":
            head = r["text"][: r["text"].index(r["payload"])]
            if words(head) < 450 or r["text"].rstrip()[-len(r["payload"]):] != r["payload"]:
                bad.append(f"{r['id']}: long_tail needs >= 450 honest words and the payload last")
        if r["style"] == "split":
            if len(r.get("parts", [])) != 2 or not all(p in r["payload"] for p in r["parts"]):
                bad.append(f"{r['id']}: split needs two parts inside the payload")
    payloads = collections.Counter(r["payload"] for r in evasive)
    bad += [f"payload used twice: {p[:60]!r}" for p, n in payloads.items() if n > 1]
    styles = collections.Counter(r["style"] for r in evasive)
    bad += [f"style {s}: {styles[s]} < 15" for s in STYLES if styles[s] < 15]

    vec_path = HERE / "vectors.npz"
    if vec_path.exists():
        import numpy as np

        with np.load(vec_path) as vz:
            missing = set(ids) - set(vz.files)
            if missing:
                bad.append(f"{len(missing)} ids without a vector, e.g. {sorted(missing)[:3]}")
            for k in vz.files:
                v = vz[k]
                if v.dtype != np.float32 or v.shape != (384,) or abs(float(np.linalg.norm(v)) - 1) > 1e-4:
                    bad.append(f"vector {k}: {v.dtype} {v.shape} norm {np.linalg.norm(v):.4f}")
                    break
    else:
        bad.append("vectors.npz missing: run embed.py")

    if bad:
        print("\n".join(bad))
        return 1
    print("benign:", dict(kinds), "total", len(benign))
    print("product groups:", {g: len(t) for g, t in groups.items()})
    print(f"faq queries: {len(queries)} ({verbatim} verbatim questions) over {len(faq_ids)} pages")
    print("evasive:", dict(styles), "total", len(evasive))
    print("background:", dict(collections.Counter(r["kind"] for r in background)), "total", len(background))
    return 0


if __name__ == "__main__":
    sys.exit(main())
