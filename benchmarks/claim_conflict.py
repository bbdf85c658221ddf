"""Query-time claim conflict on red-team bundles: does it catch single-copy same-topic poison?

Standalone research script (numpy, scipy). For each query of a bundle, the candidate pool is the
``--pool`` documents of the query's tenant with the highest cosine to the query (the bundle's
all-MiniLM-L6-v2 vectors). Every document's slot values are extracted once (``extract_claims``, as
at ingest); each pool is scored with ``conflict_scores`` (and the experimental variants below).
Labels are read only to score the result.

Units:
* ``pair``: one (query, candidate) decision, as a query-time flag would be taken; FPR over the
  clean / benign_hard candidates of all pools.
* ``doc``: a document's largest score over the pools it appears in (a document flagged in any pool
  counts once).

Variants (all at query time over the same pools):
* ``peer`` (the shipped default of ``conflict_scores``): full birth / death dates only; a
  candidate's peers are the other candidates at cosine >= 0.5 with it (same subject);
* ``peer3``: the same scores judged at the stricter a-priori threshold 3;
* ``peer_allslots``, ``peer_noplace``, ``peer_place``: the same with years and/or places;
* ``wholepool_allslots``: all slots, every other candidate a peer (the first idea; over-fires);
* ``uncorroborated``: the number of a candidate's generic values (years, numbers with units,
  capitalised multi-word names) stated by no other candidate, over (1 + shared ones).

Target pools are scored twice: ``target`` (any poison in the pool is a positive, including another
query's poison that was retrieved here) and ``target-own`` (only the query's own poison is a
positive; other poison is dropped).

Thresholds:
* ``ub``: recall at 1 % FPR with the threshold chosen on the labels (an upper bound);
* ``apriori``: fixed before looking at poison scores: flag when the score is >= 2 (at least two
  peers agree on a value of one slot type that contradicts the candidate, and no peer corroborates
  any of its values for that slot); ``peer3`` uses 3. The peer cosine 0.5 was read off the cosine
  distribution of clean same-person against different-person pairs in the bio pools.

Masks (text rewritten before extraction, for every document alike, labels unread):
* ``none``;
* ``random_date``: every "January 11" (the date almost every RobustRAG bio poison carries) becomes a
  month-day drawn from a per-document seeded generator, so no shared wrong string remains;
* ``drop_date``: every "January 11" (with a following comma) is deleted, so the poison keeps only its
  year, place and other values.

Run: ``.venv/bin/python benchmarks/claim_conflict.py [--pool 50] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from guarded_retriever.detect.claims import SLOTS, conflict_scores, extract_claims

DATE_SLOTS = ("birth_date", "death_date")
NOPLACE_SLOTS = ("birth_date", "birth_year", "death_date", "death_year")
PLACE_SLOTS = ("birth_place", "death_place")

BUNDLES = {
    "dev-families": Path("/work/shared/redteam/dev-families"),
    "dev": Path("/work/shared/redteam/dev"),
}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]


# --------------------------------------------------------------------------------------------------
# experimental generic values: "asserts many specifics nobody else states"
_GENERIC = re.compile(
    r"\b(1[0-9]{3}|20[0-9]{2})\b"                                    # years
    r"|\b(\d[\d,.]*\s?(?:%|percent|million|billion|km|kg|cm|m|miles|feet|ft|years?|tons?))\b"
    r"|((?:[A-Z][a-z'’\-]+\s+){1,3}[A-Z][a-z'’\-]+)"                  # capitalised multi-word
)


def generic_values(text: str) -> frozenset[str]:
    """Years, numbers with units, capitalised multi-word names (lower-cased)."""
    out = set()
    for m in _GENERIC.finditer(text):
        out.add(m.group(0).lower())
    return frozenset(out)


def uncorroborated(pool: Sequence[frozenset[str]]) -> list[float]:
    """Per candidate: number of its values no other candidate states, if none of them is shared."""
    counts: Counter[str] = Counter()
    for vals in pool:
        counts.update(vals)
    out = []
    for vals in pool:
        shared = sum(1 for v in vals if counts[v] > 1)
        alone = len(vals) - shared
        out.append(float(alone) / (1.0 + shared))
    return out


# --------------------------------------------------------------------------------------------------
def mask_text(text: str, mode: str) -> str:
    if mode == "none" or "January 11" not in text:
        return text
    if mode == "drop_date":
        return re.sub(r"January 11(?:st|th)?,?\s*", "", text)
    if mode == "random_date":
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)

        def rep(_: re.Match[str]) -> str:
            return f"{MONTHS[int(rng.integers(12))]} {int(rng.integers(1, 29))}"

        return re.sub(r"January 11", rep, text)
    raise ValueError(mode)


def load(bundle: Path) -> tuple[list[dict], list[dict], dict[str, tuple[str, str]], np.ndarray, np.ndarray]:
    docs = [json.loads(line) for line in (bundle / "corpus.jsonl").read_text().split("\n") if line]
    queries = [json.loads(line) for line in (bundle / "queries.jsonl").read_text().split("\n") if line]
    labels: dict[str, tuple[str, str]] = {}
    with open(bundle / "labels.tsv") as f:
        next(f)
        for line in f:
            p = line.rstrip("\n").split("\t")
            labels[p[0]] = (p[1], p[3])  # label, target query id
    emb_d = np.load(bundle / "embeddings" / "corpus.npy")
    emb_q = np.load(bundle / "embeddings" / "queries.npy")
    return docs, queries, labels, emb_d, emb_q


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    r = rankdata(np.concatenate([pos, neg]))
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def recall_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.01) -> tuple[float, float]:
    """Best recall with FPR <= fpr over thresholds 'score >= t' (t > the minimum score)."""
    best, thr = 0.0, float("inf")
    for t in np.unique(np.concatenate([pos, neg]))[::-1]:
        if (neg >= t).mean() > fpr:
            break
        if t <= min(pos.min(initial=np.inf), neg.min(initial=np.inf)):
            break
        best, thr = float((pos >= t).mean()), float(t)
    return best, thr


def evaluate(pos: np.ndarray, neg: np.ndarray, apriori: float | None) -> dict[str, float]:
    ub, thr = recall_at_fpr(pos, neg)
    out = {"n_pos": len(pos), "n_neg": len(neg), "auc": round(auc(pos, neg), 4),
           "recall_at_1pct_ub": round(ub, 4), "ub_threshold": thr}
    if apriori is not None:
        out["apriori_threshold"] = apriori
        out["apriori_recall"] = round(float((pos >= apriori).mean()) if len(pos) else float("nan"), 4)
        out["apriori_fpr"] = round(float((neg >= apriori).mean()) if len(neg) else float("nan"), 4)
    return out


# --------------------------------------------------------------------------------------------------
def run_bundle(name: str, path: Path, pool_size: int, mask: str) -> tuple[dict, dict]:
    docs, queries, labels, emb_d, emb_q = load(path)
    texts = [mask_text(d["text"], mask) for d in docs]

    t0 = time.perf_counter()
    claims = [extract_claims(t) for t in texts]
    t_extract = (time.perf_counter() - t0) / len(texts) * 1e6
    generic = [generic_values(t) for t in texts]

    by_tenant: dict[str, np.ndarray] = defaultdict(list)  # type: ignore[assignment]
    for i, d in enumerate(docs):
        by_tenant[d["metadata"]["tenant"]].append(i)
    by_tenant = {k: np.asarray(v) for k, v in by_tenant.items()}

    # scores[(tenant, kind)][variant] -> list of (doc index, score)
    rows: dict[tuple[str, str], dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    q_times = []
    tenant_times: dict[str, list[float]] = defaultdict(list)
    for qi, q in enumerate(queries):
        tenant, kind = q["metadata"]["tenant"], q["metadata"]["kind"]
        ids = by_tenant[tenant]
        sims = emb_d[ids] @ emb_q[qi]
        top = ids[np.argsort(-sims)[:pool_size]]
        pool = [claims[j] for j in top]
        vecs = emb_d[top]
        t1 = time.perf_counter()
        peer = conflict_scores(pool, vecs)  # the shipped definition: full dates, peers at cos >= 0.5
        q_times.append(time.perf_counter() - t1)
        variants = {
            "peer": peer,
            "peer3": peer,
            "peer_allslots": conflict_scores(pool, vecs, slots=SLOTS),
            "peer_noplace": conflict_scores(pool, vecs, slots=NOPLACE_SLOTS),
            "peer_place": conflict_scores(pool, vecs, slots=PLACE_SLOTS),
            "wholepool_allslots": conflict_scores(pool, slots=SLOTS),
            "uncorroborated": uncorroborated([generic[j] for j in top]),
        }
        key = (tenant, kind)
        for variant, sc in variants.items():
            rows[key][variant].extend((int(j), float(x)) for j, x in zip(top, sc, strict=False))
            if kind == "target":  # own-pool: positives only this query's own poison
                rows[(tenant, "target-own")][variant].extend(
                    (int(j), float(x)) for j, x in zip(top, sc, strict=False)
                    if labels[docs[j]["_id"]][0] != "poison" or labels[docs[j]["_id"]][1] == q["_id"])
        tenant_times[tenant].append(q_times[-1])

    apriori = {"peer": 2.0, "peer3": 3.0, "peer_allslots": 2.0, "peer_noplace": 2.0, "peer_place": 2.0,
               "wholepool_allslots": 2.0, "uncorroborated": None}
    results: dict = {}
    for (tenant, kind), variants in sorted(rows.items()):
        for variant, pairs in variants.items():
            lab = [labels[docs[j]["_id"]][0] for j, _ in pairs]
            sc = np.array([s for _, s in pairs])
            pos_m = np.array([x == "poison" for x in lab])
            neg_m = ~pos_m
            r_pair = evaluate(sc[pos_m], sc[neg_m], apriori[variant])
            doc_best: dict[int, float] = {}
            for j, s in pairs:
                doc_best[j] = max(s, doc_best.get(j, -np.inf))
            dl = np.array([labels[docs[j]["_id"]][0] == "poison" for j in doc_best])
            ds = np.array(list(doc_best.values()))
            r_doc = evaluate(ds[dl], ds[~dl], apriori[variant])
            r_pair["benign_hard_in_pools"] = int(sum(x == "benign_hard" for x in lab))
            results[f"{name}/{tenant}/{kind}/{variant}"] = {"pair": r_pair, "doc": r_doc}

    # diagnostics for the poison in their own target pool
    cost = {
        "extract_us_per_doc": round(t_extract, 2),
        "query_us_per_pool": round(float(np.mean(q_times)) * 1e6, 1),
        "query_us_per_pool_p99": round(float(np.percentile(q_times, 99)) * 1e6, 1),
        "query_us_per_pool_by_tenant": {t: round(float(np.mean(v)) * 1e6, 1) for t, v in tenant_times.items()},
        "slot_fill": dict(Counter(k for c in claims for k in c)),
    }
    return results, cost


def fmt(results: dict) -> str:
    lines = [f"{'bundle/tenant/kind/variant':55s} {'unit':4s} {'pos':>4s} {'neg':>6s} {'AUC':>6s} "
             f"{'R@1%ub':>7s} {'thr':>5s} {'apR':>6s} {'apFPR':>6s}"]
    for key, r in results.items():
        for unit in ("pair", "doc"):
            x = r[unit]
            lines.append(
                f"{key:55s} {unit:4s} {x['n_pos']:4d} {x['n_neg']:6d} {x['auc']:6.3f} "
                f"{x['recall_at_1pct_ub']:7.3f} {x['ub_threshold']:5.2f} "
                f"{x.get('apriori_recall', float('nan')):6.3f} {x.get('apriori_fpr', float('nan')):6.4f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=50)
    ap.add_argument("--masks", default="none,random_date,drop_date")
    ap.add_argument("--bundles", default="dev-families,dev")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    everything: dict = {"pool": args.pool}
    for mask in args.masks.split(","):
        for b in args.bundles.split(","):
            res, cost = run_bundle(b, BUNDLES[b], args.pool, mask)
            print(f"\n== mask={mask} bundle={b} pool={args.pool}  cost={cost}")
            print(fmt(res))
            everything[f"{mask}/{b}"] = {"results": res, "cost": cost}
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
