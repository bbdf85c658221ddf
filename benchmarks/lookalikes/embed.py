"""Embed every text of the look-alike sets with all-MiniLM-L6-v2 and write ``vectors.npz``.

Reads benign.jsonl, evasive.jsonl, faq_queries.jsonl and background.jsonl next to this file and
writes one float32, L2-normalised 384-d row per record, keyed by the record's id (ids are unique
across the four files). The model is the package's own verified loader,
:class:`guarded_retriever._embed.MiniLMEmbedder` (the `embed` extra; nothing is downloaded).

    .venv/bin/python benchmarks/lookalikes/embed.py

Queries are embedded with ``embed_query`` and documents with ``embed_documents``; for MiniLM both
are the same encoder. Texts longer than the model's 256 word-piece window are truncated by
sentence-transformers, as they would be at ingest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FILES = ("benign.jsonl", "evasive.jsonl", "background.jsonl", "faq_queries.jsonl")


def load(name: str) -> list[dict]:
    with (HERE / name).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def main() -> int:
    from guarded_retriever._embed import MiniLMEmbedder

    model = MiniLMEmbedder()
    out: dict[str, np.ndarray] = {}
    for name in FILES:
        rows = load(name)
        texts = [r["text"] for r in rows]
        if name == "faq_queries.jsonl":
            vecs = np.stack([model.embed_query(t) for t in texts])
        else:
            vecs = model.embed_documents(texts)
        vecs = np.asarray(vecs, dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        for r, v in zip(rows, vecs, strict=True):
            if r["id"] in out:
                raise SystemExit(f"duplicate id {r['id']} in {name}")
            out[r["id"]] = v
        print(f"{name}: {len(rows)} rows", file=sys.stderr)
    np.savez_compressed(HERE / "vectors.npz", **out)
    print(f"wrote {len(out)} vectors to {HERE / 'vectors.npz'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
