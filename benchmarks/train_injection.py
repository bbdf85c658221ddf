"""Train the shipped injection detector, with leave-one-family-out and leave-one-bundle-out figures.

Usage:
    python benchmarks/train_injection.py [--write] [--lofo] [--lobo]

What it trains on (public data only; none of it ships, only the weights do):

* positives, by family:
  - ``bipia-text`` / ``bipia-code``: BIPIA's train-split attack instructions
    (``../shared/training/bipia-train``);
  - ``tensor-trust``: Tensor Trust extraction attacks 300-569 (``../shared/training/tensor-trust-
    extraction``; the dev-families bundle plants 0-299, which therefore stay held out);
  - ``project``: ``benchmarks/injection_train/attacks*.txt``, payloads written for this project
    (notes addressed to "the assistant", requests about the summary, polite extra tasks, requests
    split over sentences, ten languages, fake delimiters, markup and alt text, exfiltration links,
    obfuscations, persona switches);
* negatives: the even-hashed half of every bundle's clean and benign look-alike documents (the odd
  half is held out for the false-positive figures below), BIPIA's benign train contexts,
  ``benchmarks/injection_train/benign*.txt`` (support macros, runbooks, tutorials, READMEs,
  security articles quoting attacks, prompt-engineering docs, FAQ pages, non-English help text,
  policies, reviews, meeting notes, written for the project), and three sources of real text the
  bundles lack, cut into chunks: the package descriptions (READMEs), docstrings and code of the
  standard library and of the virtual environment's distributions (developer text, full of
  commands, imports, subprocess calls, HTML comments and instructions to the reader; the
  environment is pinned by ``constraints.txt``), and Django's translated interface strings (help
  text in about a hundred languages: ``pip install 'Django==5.2.20'`` before training).

A payload is a positive *window*: the detector scores segments and pairs of neighbouring segments,
so training does too. A long attack has innocuous segments ("Thanks."), so training runs twice
(multiple-instance style): first every window of a payload is positive, then only the windows the
first model scores highest for each payload (and any it already calls positive).

``benchmarks/lookalikes/`` is an evaluation set written separately: it is reported, never trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression

from guarded_retriever.detect.injection import MIN_GRAMS, InjectionDetector, hashed_segments

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BUNDLES = [SHARED / "redteam/dev", SHARED / "redteam/dev-families"]
TRAIN = SHARED / "training"
OUT = ROOT / "src/guarded_retriever/data/injection_model.npz"
BITS = 18
INJECTION_FAMILIES = {"bipia-text-injection": "bipia-text", "bipia-code-injection": "bipia-code",
                      "tensor-trust-extraction": "tensor-trust"}


def _lines(path: Path) -> list[str]:
    return [line.rstrip("\n").replace("\\n", "\n") for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def _held_out(doc_id: str) -> bool:
    """A stable half of the bundles' negatives that training never sees."""
    return hashlib.sha256(doc_id.encode()).digest()[0] % 2 == 1


@dataclass
class BundleDocs:
    name: str
    ids: list[str]
    texts: list[str]
    label: list[str]
    attack: list[str]
    tenant: list[str]
    source: list[str]


def load_bundle(root: Path) -> BundleDocs:
    labels = {}
    with (root / "labels.tsv").open(encoding="utf-8") as f:
        next(f)
        for line in f:
            p = line.rstrip("\n").split("\t")
            labels[p[0]] = (p[1], p[2])
    b = BundleDocs(root.name, [], [], [], [], [], [])
    with (root / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            label, attack = labels.get(d["_id"], ("clean", "-"))
            b.ids.append(d["_id"])
            b.texts.append(d.get("text") or "")
            b.label.append(label)
            b.attack.append(attack)
            b.tenant.append(d.get("metadata", {}).get("tenant", ""))
            b.source.append(d.get("metadata", {}).get("source", ""))
    return b


def payloads() -> dict[str, list[str]]:
    text = json.loads((TRAIN / "bipia-train/text_attack_train.json").read_text())
    code = json.loads((TRAIN / "bipia-train/code_attack_train.json").read_text())
    with (TRAIN / "tensor-trust-extraction/extraction_robustness_dataset.jsonl").open() as f:
        tt = [json.loads(line)["attack"] for line in f if line.strip()]
    families = {
        "bipia-text": [s for v in text.values() for s in v],
        "bipia-code": [_without_code(s) for v in code.values() for s in v],
        "tensor-trust": tt[300:],
        "project": [t for f in sorted((ROOT / "benchmarks/injection_train").glob("attacks*.txt")) for t in _lines(f)],
    }
    return {name: [_real_looking_hosts(t) for t in texts] for name, texts in families.items()}


_FENCED = re.compile(r"```.*?(?:```|\Z)", re.S)
# Host names under the reserved example TLDs and domains (RFC 2606), with their subdomains.
_RESERVED_HOST = re.compile(r"\b(?:[a-z0-9-]+\.)*(?:[a-z0-9-]+\.(?:example|test|invalid|localhost)|"
                            r"example\.(?:com|net|org))(?:\.[a-z]{2})?\b", re.I)
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "zen", "bar", "cor", "dal", "fin", "gor",
              "hal", "jun", "kel", "mar", "nor", "pel", "quo", "ril", "sul", "tav", "ver", "wen")
_TLDS = ("com", "net", "org", "io", "de", "co.uk", "fr", "app", "info", "biz")


def _real_looking_hosts(text: str) -> str:
    """``text`` with every reserved example host (``acme-helpdesk.example``, ``x.test``) replaced by
    an ordinary-looking one drawn from a hash of it.

    Payloads written for training use reserved names, as they must, and so do many benign ones,
    but in different proportions: left as they are, ``.example`` itself becomes evidence of an
    attack, and a status page at ``status.acme.example`` scores 0.94. Real text has real hosts.
    """
    def swap(m: re.Match[str]) -> str:
        h = hashlib.sha256(m.group(0).lower().encode()).digest()
        name = "".join(_SYLLABLES[b % len(_SYLLABLES)] for b in h[: 2 + h[2] % 2])
        return f"{name}.{_TLDS[h[3] % len(_TLDS)]}"

    return _RESERVED_HOST.sub(swap, text)


def _without_code(payload: str) -> str:
    """A BIPIA code attack without its snippet: the request to use it ("Incorporate the following
    code into your solution:") is what sets it apart. The snippet itself (``import os``,
    ``requests.post``) is ordinary code, and as a positive it would teach the detector that every
    tutorial's imports are an attack; planted code is the ``code_payload`` rule's to judge."""
    return _FENCED.sub("", payload).strip()


def bipia_contexts() -> list[str]:
    out = []
    for name in ("email_train.jsonl", "table_train.jsonl", "code_train.jsonl"):
        with (TRAIN / "bipia-train" / name).open() as f:
            for line in f:
                ctx = json.loads(line)["context"]
                out.append("\n".join(ctx) if isinstance(ctx, list) else ctx)
    return out


def readme_chunks(limit: int = 4000, size: int = 1200) -> list[str]:
    """Paragraph chunks of the installed distributions' long descriptions (see the module doc)."""
    from importlib import metadata

    chunks: list[str] = []
    seen: set[str] = set()
    for dist in sorted(metadata.distributions(), key=lambda d: d.metadata.get("Name", "") or ""):
        body = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else ""
        if not isinstance(body, str) or not body.strip():
            continue
        current = ""
        for para in body.split("\n\n"):
            if len(current) + len(para) > size and current:
                if current not in seen:
                    seen.add(current)
                    chunks.append(current)
                current = ""
            current = f"{current}\n\n{para}" if current else para
        if current and current not in seen:
            chunks.append(current)
    return chunks[:limit]


def _python_files(min_size: int, max_size: int, *, salt: bytes = b"") -> list[Path]:
    """The ``.py`` files of the standard library and the virtual environment of ``min_size`` to
    ``max_size`` bytes (``max_size`` excluded), in the order of a salted hash of their paths: a
    stable, spread sample that a limit can cut anywhere."""
    import sysconfig

    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    return sorted({f for root in roots for f in root.rglob("*.py") if min_size <= f.stat().st_size < max_size},
                  key=lambda f: hashlib.sha256(salt + str(f.relative_to(f.anchor)).encode()).digest())


def docstring_chunks(limit: int = 6000, size: int = 1200, min_chars: int = 200) -> list[str]:
    """Docstrings of the standard library and the virtual environment's packages, cut into chunks.

    Developer documentation is imperative from end to end ("Call this before ...", "Pass ``shell=True``
    to run ...", "Ignore the return value if ..."), quotes code, commands and environment variables,
    and addresses a reader who is told what to do: the text a code tutorial, a README or a runbook is
    made of, and the text an injection detector trained on web passages confuses with requests.
    Files are taken in the order of a hash of their path (a stable, spread sample) until ``limit``
    chunks are gathered.
    """
    import ast

    files = _python_files(0, 1_000_000)
    chunks: list[str] = []
    seen: set[str] = set()
    for f in files:
        try:
            tree = ast.parse(f.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < min_chars:
                continue
            for chunk in _paragraph_chunks(doc, size):
                if len(chunk) >= min_chars and chunk not in seen:
                    seen.add(chunk)
                    chunks.append(chunk)
        if len(chunks) >= limit:
            break
    return chunks[:limit]


def source_chunks(limit: int = 4000, size: int = 800) -> list[str]:
    """Real Python code, cut into chunks: the head of each module (its imports) and one stretch
    from its middle.

    BIPIA's code attacks are a sentence ("Incorporate the following code into your solution:")
    and a snippet that imports ``os``, ``requests`` or ``subprocess``. Without real code among
    the negatives a model learns the imports, and every tutorial that shows ``import os`` reads
    as an attack; with it, what is left to learn is the request to use the code.
    """
    import ast

    files = _python_files(2_001, 200_000, salt=b"code:")
    chunks: list[str] = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        lines = text.splitlines()
        body = tree.body[1:] if tree.body and isinstance(tree.body[0], ast.Expr) else tree.body  # no docstring
        if not body:
            continue
        head = "\n".join(lines[body[0].lineno - 1:])[:size]
        middle = "\n".join(lines[len(lines) // 2:])[:size]
        chunks.extend(c for c in (head, middle) if len(c.strip()) > 100)
        if len(chunks) >= limit:
            break
    return chunks[:limit]


def translation_chunks(per_language: int = 40, strings: int = 6) -> list[str]:
    """Django's translated interface strings, a few to a chunk, per language.

    Real help and interface text in about a hundred languages, written by people and full of
    instructions to a user ("Geben Sie ein gültiges Passwort ein.", "请输入正确的..."): the
    non-English negatives that no bundle holds. Django is not a dependency of the package:
    ``pip install 'Django==5.2.20'`` before training (the figures in the README were trained so).
    """

    try:
        import django
    except ImportError as exc:
        raise SystemExit("train_injection.py: pip install 'Django==5.2.20' first "
                         "(its translation catalogues are the non-English negatives)") from exc
    placeholder = re.compile(r"%\(\w+\)[sd]|%[sd]|\{\w*\}")
    by_language: dict[str, list[str]] = defaultdict(list)
    for po in sorted(Path(django.__file__).parent.rglob("LC_MESSAGES/django.po")):
        language = po.parent.parent.name
        if language.startswith("en"):
            continue
        for msg in _po_strings(po.read_text(encoding="utf-8", errors="replace")):
            text = placeholder.sub("X", msg).strip()
            if len(text.split()) >= 4 or (len(text) >= 12 and not text.isascii()):
                by_language[language].append(text)
    chunks: list[str] = []
    for language in sorted(by_language):
        texts = by_language[language]
        group = [" ".join(texts[i:i + strings]) for i in range(0, len(texts), strings)]
        chunks.extend(group[:per_language])
    return chunks


def _po_strings(po: str) -> list[str]:
    """The non-empty ``msgstr`` values of a gettext catalogue (continuation lines joined)."""
    import ast

    out: list[str] = []
    current: list[str] | None = None
    for line in [*po.splitlines(), ""]:
        if line.startswith("msgstr"):
            current = [line.split(" ", 1)[1]] if " " in line else []
        elif current is not None and line.startswith('"'):
            current.append(line)
        elif current is not None:
            try:
                text = "".join(ast.literal_eval(part) for part in current)
            except (ValueError, SyntaxError):
                text = ""
            if text and "Project-Id-Version:" not in text:  # the catalogue's header
                out.append(text)
            current = None
    return out


def _paragraph_chunks(body: str, size: int) -> list[str]:
    """``body`` cut at blank lines into chunks of at most about ``size`` characters."""
    chunks, current = [], ""
    for para in body.split("\n\n"):
        if len(current) + len(para) > size and current:
            chunks.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para
    if current:
        chunks.append(current)
    return chunks


# -- windows: the rows the model is trained on, built exactly as the detector scores ------------


def windows(texts: Sequence[str], bits: int = BITS) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Every segment and every pair of neighbouring segments of each text, as normalised hashed
    counts; and the index of the text each window came from."""
    rows, cols, vals, owner = [], [], [], []
    r = 0
    for t, text in enumerate(texts):
        buckets, seg, starts = hashed_segments(InjectionDetector.views(text), bits)
        count = len(starts)
        if not len(buckets):
            continue
        per = [buckets[seg == k] for k in range(count)] if count > 1 else [buckets]
        spans = [p for p in per] + [np.concatenate([per[k], per[k + 1]]) for k in range(count - 1)]
        for k, span in enumerate(spans):
            if len(span) < (MIN_GRAMS if k < count else 1):
                continue
            u, c = np.unique(span, return_counts=True)
            rows.append(np.full(len(u), r))
            cols.append(u)
            vals.append(c / np.sqrt(len(span)))
            owner.append(t)
            r += 1
    if not r:
        return sparse.csr_matrix((0, 1 << bits)), np.zeros(0, np.int64)
    m = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(r, 1 << bits), dtype=np.float32)
    return m, np.asarray(owner)


def train(pos: dict[str, list[str]], neg: Sequence[str], hard: Sequence[str], *, c: float = 16.0,
          share: float = 0.5, hard_weight: float = 10.0, provenance: str) -> InjectionDetector:
    """Two-round multiple-instance logistic regression (see the module docstring)."""
    xn, _ = windows(neg)
    xh, _ = windows(hard)
    texts = [t for fam in sorted(pos) for t in pos[fam]]
    fam_of = [fam for fam in sorted(pos) for _ in pos[fam]]
    xp, owner = windows(texts)
    n_neg = xn.shape[0] + hard_weight * xh.shape[0]

    def fit(xpos: sparse.csr_matrix, pos_owner: np.ndarray) -> LogisticRegression:
        # Each family weighs the same in total, and each payload the same within its family,
        # however many windows it has: a 600-token Tensor Trust attack does not outvote a
        # one-line BIPIA request.
        fam_count = defaultdict(int)
        for fam in fam_of:
            fam_count[fam] += 1
        per_payload = np.bincount(pos_owner, minlength=len(texts)).astype(np.float64)
        w_pos = np.array([share * n_neg / len(fam_count) / fam_count[fam_of[o]] / per_payload[o]
                          for o in pos_owner])
        x = sparse.vstack([xn, xh, xpos]).tocsr()
        y = np.concatenate([np.zeros(xn.shape[0] + xh.shape[0]), np.ones(xpos.shape[0])])
        w = np.concatenate([np.ones(xn.shape[0]), np.full(xh.shape[0], hard_weight), w_pos])
        model = LogisticRegression(C=c, solver="liblinear", max_iter=200)
        model.fit(x, y, sample_weight=w)
        return model

    first = fit(xp, owner)
    z = first.decision_function(xp)
    keep = np.zeros(len(z), bool)
    for o in np.unique(owner):
        idx = np.flatnonzero(owner == o)
        keep[idx[np.argmax(z[idx])]] = True
        keep[idx[z[idx] > 0]] = True
    second = fit(xp[keep], owner[keep])
    return InjectionDetector(second.coef_[0].astype(np.float32), float(second.intercept_[0]),
                             provenance=provenance)


# -- evaluation ----------------------------------------------------------------------------------


def recall_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.01) -> float:
    if not len(pos) or not len(neg):
        return float("nan")
    t = np.quantile(neg, 1 - fpr, method="higher")
    return float((pos > t).mean())


def evaluate(det: InjectionDetector, bundles: Iterable[BundleDocs], families: Iterable[str] | None = None,
             threshold: float = 0.5) -> dict[str, object]:
    out: dict[str, object] = {}
    for b in bundles:
        probs = np.array([v.probability for v in det.score_batch(b.texts)])
        held = np.array([_held_out(i) for i in b.ids])
        lab = np.array(b.label)
        neg = held & (lab != "poison")
        kinds = defaultdict(list)
        for i in np.flatnonzero(neg):
            kinds[f"{b.label[i]}/{b.tenant[i]}/{b.source[i]}"].append(probs[i])
        fams = sorted({a for a, lb in zip(b.attack, b.label, strict=True) if lb == "poison"})
        report = {"fpr_at_threshold (held-out half)": {k: round(float(np.mean(np.array(v) >= threshold)), 4)
                                                       for k, v in sorted(kinds.items())}}
        for fam in fams:
            if families is not None and INJECTION_FAMILIES.get(fam) not in families:
                continue
            m = (lab == "poison") & (np.array(b.attack) == fam)
            report[fam] = {"n": int(m.sum()), "recall_at_threshold": round(float((probs[m] >= threshold).mean()), 3),
                           "recall_at_1pct_fpr": round(recall_at_fpr(probs[m], probs[neg]), 3)}
        out[b.name] = report
    return out


def evaluate_lookalikes(det: InjectionDetector, threshold: float = 0.5) -> dict[str, object]:
    root = ROOT / "benchmarks/lookalikes"
    out: dict[str, object] = {}
    for name, key in (("benign.jsonl", "kind"), ("evasive.jsonl", "style")):
        path = root / name
        if not path.is_file():
            continue
        rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
        probs = [v.probability for v in det.score_batch([r["text"] for r in rows])]
        by = defaultdict(list)
        for r, p in zip(rows, probs, strict=True):
            by[r[key]].append(p >= threshold)
        out[name] = {k: round(float(np.mean(v)), 3) for k, v in sorted(by.items())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="store the model in the package's data/")
    ap.add_argument("--lofo", action="store_true", help="leave each positive family out once")
    ap.add_argument("--lobo", action="store_true", help="train negatives on one bundle, test on the other")
    ap.add_argument("--save-lofo", type=Path, help="with --lofo: save each held-out model here as without-FAMILY.npz "
                    "(fit_poison_model.py --lofo-detectors reads them for end-to-end figures)")
    ap.add_argument("--c", type=float, default=16.0)
    ap.add_argument("--share", type=float, default=0.5)
    args = ap.parse_args()

    t0 = time.perf_counter()
    bundles = [load_bundle(p) for p in BUNDLES]
    pos = payloads()
    contexts = bipia_contexts()
    project_benign = [t for f in sorted((ROOT / "benchmarks/injection_train").glob("benign*.txt")) for t in _lines(f)]
    developer = readme_chunks() + docstring_chunks() + source_chunks() + translation_chunks()

    def negatives(use: Sequence[BundleDocs]) -> tuple[list[str], list[str]]:
        clean, hard = list(developer), list(contexts) + project_benign
        for b in use:
            for i, text, label in zip(b.ids, b.texts, b.label, strict=True):
                if _held_out(i) or label == "poison":
                    continue
                (hard if label == "benign_hard" else clean).append(text)
        return [_real_looking_hosts(t) for t in clean], [_real_looking_hosts(t) for t in hard]

    clean, hard = negatives(bundles)
    print(f"positives { {k: len(v) for k, v in pos.items()} }, negatives {len(clean)} clean + {len(hard)} hard")
    det = train(pos, clean, hard, c=args.c, share=args.share,
                provenance=f"train_injection.py: {', '.join(f'{k} {len(v)}' for k, v in pos.items())} "
                           f"positives; {len(clean)} clean and {len(hard)} look-alike negatives")
    print(f"trained in {time.perf_counter() - t0:.0f} s")
    shipped = InjectionDetector.default()
    print(json.dumps({"shipped": {"bundles": evaluate(shipped, bundles), "lookalikes": evaluate_lookalikes(shipped)},
                      "trained": {"bundles": evaluate(det, bundles), "lookalikes": evaluate_lookalikes(det)}},
                     indent=1))
    if args.lofo:
        for fam in sorted(pos):
            rest = {k: v for k, v in pos.items() if k != fam}
            held = train(rest, clean, hard, c=args.c, share=args.share, provenance=f"without {fam}")
            if args.save_lofo is not None:
                args.save_lofo.mkdir(parents=True, exist_ok=True)
                held.save(args.save_lofo / f"without-{fam}.npz")
            result = evaluate(held, bundles, families=[fam]) if fam != "project" else {}
            print(f"leave out {fam}:", json.dumps({"bundles": result, "lookalikes": evaluate_lookalikes(held)}))
    if args.lobo:
        for i, b in enumerate(bundles):
            other = [x for j, x in enumerate(bundles) if j != i]
            c2, h2 = negatives(other)
            held = train(pos, c2, h2, c=args.c, share=args.share, provenance=f"negatives without {b.name}")
            print(f"negatives without {b.name}:", json.dumps(evaluate(held, [b])))
    if args.write:
        digest = det.save(OUT)
        print(f"wrote {OUT} ({OUT.stat().st_size} bytes), sha256 {digest}: pin it as MODEL_SHA256")


if __name__ == "__main__":
    main()
