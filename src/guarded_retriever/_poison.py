"""Poison risk: named features, a calibrated combination, and the reasons that fired.

Each feature maps a document (or, at query time, a candidate in the context of its query) to a
strength in ``[0, 1]``. :class:`PoisonModel` turns a feature vector into
``poison_score = sigmoid(bias + Σ wᵢ·xᵢ)`` and names the features whose contribution ``wᵢ·xᵢ``
reaches :attr:`PoisonModel.reason_floor` as the *reasons*. Its weights are a small JSON artefact
(``data/poison_model.json``); :meth:`PoisonModel.fit` refits them on labelled features (L2-regularised
logistic regression by Newton's method) and :func:`threshold_at_fpr` picks τ from a ROC.

Ingest-time features (``INGEST_FEATURES``) look at one document:

``instruction_override``
    role-override phrases (ignore / disregard / forget the previous instructions, "you are now",
    "new instructions", "system prompt", developer mode ...).
``assistant_directive``
    sentences addressed to the model or about its output rather than about the subject: "in your
    answer", "respond only with", "tell the user", "the assistant must" ... Injected tasks rarely say
    "ignore previous instructions"; they ask the model to do something to its reply.
``embedded_instruction``
    a request aimed at a reader — a line that opens with a task verb ("write", "provide",
    "substitute", "use") or asks a question — sitting inside structured data (a table). Data does
    not address its reader; text planted in it to be retrieved into a prompt does. A stand-alone
    question or request (a user's note, a FAQ) is not structured data and does not fire.
``hidden_text``
    invisible characters *inside* Latin words (zero-width, bidi, soft hyphen: a filter-evasion
    trick), bidi overrides, Unicode tag characters, mixed-script (homoglyph) words, HTML comments,
    CSS that hides text, ``<script>`` remnants. Joiners and direction marks next to non-Latin
    script are ordinary typography (Persian, Arabic, Indic text) and do not count.
``suspicious_url``
    raw-IP hosts, ``data:``/``javascript:`` URIs, punycode hosts, high-entropy host names.
``code_payload``
    code that reaches out or executes: ``subprocess``, ``os.system``, ``eval``/``exec``, sockets,
    ``curl | sh``, base64 blobs.
``near_duplicate_burst``
    several near-duplicates (simhash Hamming distance ≤ 3) of the document in its namespace,
    set by the ingest pipeline.

Query-time features (``QUERY_FEATURES``) exist only against a query; the retrieval core fills them:

``query_echo``
    the passage repeats the query nearly verbatim (PoisonedRAG passages open with the copied question).
``paraphrase_cluster``
    the passage sits in a tight cluster of mutual paraphrases among the query's candidates.

Pre-filters keep the common case cheap: the phrase regexes only run when a document contains one
of their trigger tokens and one of the literal strings every match contains, and the hidden-text
scans only run on non-ASCII text with a suspect character, or on text with markup.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import orjson

from ._canonical import INVISIBLE_CHARS
from ._exceptions import ConfigError

__all__ = [
    "DETECTOR_FEATURES",
    "FEATURES",
    "INGEST_FEATURES",
    "QUERY_FEATURES",
    "PoisonModel",
    "document_features",
    "threshold_at_fpr",
]

INGEST_FEATURES: tuple[str, ...] = (
    "instruction_override",
    "assistant_directive",
    "embedded_instruction",
    "hidden_text",
    "suspicious_url",
    "code_payload",
    "near_duplicate_burst",
)
QUERY_FEATURES: tuple[str, ...] = ("query_echo", "paraphrase_cluster")
DETECTOR_FEATURES: tuple[str, ...] = ("injection", "cluster_contrast")
"""Ingest-time evidence from the detectors of :mod:`guarded_retriever.detect`. They come last so
that feature arrays saved before they existed are a prefix of today's (a load pads them with 0)."""
FEATURES: tuple[str, ...] = INGEST_FEATURES + QUERY_FEATURES + DETECTOR_FEATURES
FEATURE_INDEX = {name: i for i, name in enumerate(FEATURES)}

# --- instruction and directive phrases (run on canonical text: lowercase, spaces collapsed) ---

_OVERRIDE_TRIGGERS = frozenset(
    "ignore disregard forget override bypass instructions instruction prompt developer anything "
    "now act".split()
)
# Deliberately narrow: "ignore the error", "pretend to be a tour guide" or "jailbreak" on its own
# are ordinary requests (NotInject-style look-alikes). What overrides an assistant names the
# instructions it wants dropped, or switches the assistant into another mode.
_OVERRIDE = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass)\b(?:\W+\w+){0,3}?\W+"
    r"(?:previous|prior|above|earlier|preceding|foregoing|original|initial|system|all)\b"
    r"(?:\W+\w+){0,2}?\W+(?:instructions?|prompts?|rules|directions|guidelines|directives?|"
    r"messages?|told)\b"
    r"|\bnew (?:instructions?|rules|task)\s*:"
    r"|\b(?:reveal|print|repeat|show|output|leak)\b(?:\W+\w+){0,3}?\W+(?:system|initial) prompt\b"
    r"|\bdeveloper mode\b|\bdo anything now\b"
    r"|\byou are now (?:dan|in (?:developer|god|unrestricted)|an? (?:unrestricted|unfiltered))\b"
    r"|\bfrom now on,? you (?:will|must|are|shall)\b"
    r"|\bact as (?:an? )?(?:unrestricted|unfiltered|jailbroken)\b"
)
# Every alternative of _OVERRIDE contains one of these (see _CODE_LITERALS for why).
_OVERRIDE_LITERALS = (
    "ignore", "disregard", "forget", "override", "bypass", "new instruction", "new rules", "new task",
    " prompt", "developer mode", "do anything now", "you are now ", "from now on", "act as ",
)

_DIRECTIVE_TRIGGERS = frozenset(
    "your answer answers answering response responses responding respond reply replies replying "
    "assistant ai chatbot model llm user summary summarize summarizing output following".split()
)
_DIRECTIVE = re.compile(
    r"\b(?:in|to|into|within|throughout|of|for|with) your (?:answer|response|reply|output|summary|"
    r"code|translation|message)s?\b"
    r"|\byour (?:answer|response|reply|output|solution|implementation)(?:'s|s)?\b"
    r"|\bfollowing code (?:block|snippet|section|excerpt|segment)\b|\bfollowing (?:snippet|excerpt)\b"
    r"|\b(?:respond|reply)(?: only)? (?:with|in|using|by)\b|\banswer only (?:with|in|using)\b"
    r"|\b(?:when|while|before|after) (?:answering|responding|replying|summari[sz]ing)\b"
    r"|\b(?:tell|inform|remind|ask|urge|convince) the (?:user|reader)\b"
    r"|\bthe (?:assistant|ai|chatbot|model|llm) (?:must|should|will|shall)\b"
    r"|\bas an? (?:ai|large language model|language model)\b"
    r"|\b(?:append|prepend|insert) (?:the following|this)\b"
)
# Every alternative of _DIRECTIVE contains one of these (see _CODE_LITERALS for why).
_DIRECTIVE_LITERALS = (
    "your ", "following ", "respond", "reply", "answer only", "answering", "summari", "the user",
    "the reader", "the assistant", "the ai", "the chatbot", "the model", "the llm", "as a ai", "as an ai",
    "language model", "append", "prepend", "insert",
)

# --- code that reaches out or executes ---

_CODE_TRIGGERS = frozenset(
    "import subprocess os exec eval socket base64 curl wget powershell requests urllib sh bash "
    "system popen paho mqtt smtplib ftplib http psutil environ getpass httpx aiohttp urllib3 sendmail "
    "secure_smtplib smtp smtp_ssl".split()
)
# Code that executes, sends data off the machine, or collects what is worth sending. One match
# is common in honest code; two (collect + send, fetch + run) is the shape of a payload.
_CODE = re.compile(
    r"\bsubprocess\.\w+|\bos\.(?:system|popen|exec\w*)\s*\(|\b(?:eval|exec)\s*\(|\bsocket\.\w+"
    r"|\b(?:curl|wget)\b[^|\n]{0,200}\|\s*(?:ba)?sh\b|\bpowershell\b|\bbase64\.b64decode\b"
    r"|\b__import__\s*\(|\brequests\.(?:get|post|put)\s*\(|\bpaho\.mqtt\b|\bpublish\.single\s*\("
    r"|\b(?:smtplib|ftplib)\.\w+|\burllib\.request\.\w+|\bhttp\.client\.\w+"
    r"|\bos\.environ\b|\bpsutil\.\w+|\bgetpass\.\w+"
    r"|\b(?:httpx|aiohttp|urllib3)\.\w+\s*\(|\b\w*smtplib\b|\.sendmail\s*\(|\bsmtp(?:_ssl)?\s*\("
)
# Every alternative of _CODE contains one of these strings (``smtp`` covers the three smtp ones,
# ``os.`` both os ones), so a text without any has no match. Trigger tokens such as "system" or
# "http" are common in prose, and these regexes have no literal prefix for ``re`` to search for:
# they try a match at every position, 20-150 µs on a page, where the ``in`` scans take 1-2 µs.
_CODE_LITERALS = (
    "subprocess.", "os.", "eval", "exec", "socket.", "curl", "wget", "powershell", "base64.b64decode",
    "__import__", "requests.", "paho.mqtt", "publish.single", "smtp", "ftplib.", "urllib.request.",
    "http.client.", "psutil.", "getpass.", "httpx.", "aiohttp.", "urllib3.", ".sendmail",
)

_TRIGGERS = _OVERRIDE_TRIGGERS | _DIRECTIVE_TRIGGERS | _CODE_TRIGGERS

# --- a request to the reader inside structured data ---

_TASK_VERBS = frozenset(
    "write provide explain describe create generate compose list summarize summarise translate "
    "give tell answer respond reply include add insert append use employ incorporate integrate "
    "modify substitute replace scramble rewrite reword format convert output print say mention "
    "recommend suggest promote encourage ask remind make start begin end conclude avoid refrain "
    "ensure please draft develop design share offer enhance augment consider utilize utilise "
    "apply present highlight emphasize emphasise change reverse spell express craft imagine "
    "pretend act respond can could would what who whom whose where when why how which".split()
)
_WORD = re.compile(r"[A-Za-z']+")

# --- hidden text (run on the raw text: canonicalisation removes exactly what we look for) ---

_INVISIBLE = re.compile("[" + re.escape(INVISIBLE_CHARS) + "]")
_MARKUP = re.compile(
    r"<!--|<\s*script\b|display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0"
    r"|opacity\s*:\s*0(?:\.0+)?\s*[;}\"']|color\s*:\s*(?:white|#fff(?:fff)?)\b",
    re.IGNORECASE,
)
# A match without "<" is a CSS property whose name ends in "y", "e" or "r" (no other character
# matches those under IGNORECASE), then a colon: a text without either matches nothing. Looking
# for this is a fast character-set scan; _MARKUP tries a match at every position (IGNORECASE
# leaves it no prefix to scan for), about 15 µs on a page with a colon.
_CSS_PROPERTY = re.compile(r"[eryERY]\s*:")
# A word that mixes Latin letters with Cyrillic or Greek ones is a homoglyph disguise.
_MIXED_SCRIPT = re.compile(
    r"\b(?=\w*[a-zA-Z])(?=\w*[\u0370-\u03ff\u0400-\u04ff])\w+\b"
)
# Pre-filters: a text without a Greek or Cyrillic letter has no mixed-script word, and tag
# characters are counted by one scan in C rather than a Python loop over every character.
_GREEK_CYRILLIC = re.compile(r"[\u0370-\u03ff\u0400-\u04ff]")
_TAG_CHARS = re.compile("[\U000e0000-\U000e007f]")
# Most non-ASCII text (accents, curly quotes, CJK) has none of the characters the three scans
# look for; one scan for any of them spares the other three.
_HIDDEN_CANDIDATE = re.compile("[" + re.escape(INVISIBLE_CHARS) + "\u0370-\u03ff\u0400-\u04ff\U000e0000-\U000e007f]")

# --- URLs ---

_URL = re.compile(r"\b(?:https?|ftp)://([^\s/?#'\"<>)\]]+)|\b(?:data:[\w.+-]+/[\w.+-]+[;,]|javascript:)",
                  re.IGNORECASE)
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?$")


def _entropy(s: str) -> float:
    counts: dict[str, int] = {}
    for c in s:
        counts[c] = counts.get(c, 0) + 1
    n = len(s)
    return -sum(k / n * math.log2(k / n) for k in counts.values())


def _url_risk(raw: str) -> float:
    hits = 0
    for m in _URL.finditer(raw):
        host = m.group(1)
        if host is None:  # data: or javascript: URI
            hits += 1
            continue
        host = host.lower().rsplit("@", 1)[-1]
        raw_ip = _IPV4.match(host) or host.startswith("[")
        random_looking = len(host) >= 20 and _entropy(host.split(":")[0]) > 4.0
        if raw_ip or "xn--" in host or random_looking:
            hits += 1
    return min(1.0, hits / 2)


_BIDI_OVERRIDES = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _hidden_risk(raw: str) -> float:
    score = 0.0
    if not raw.isascii() and _HIDDEN_CANDIDATE.search(raw):
        suspicious = 0
        for m in _INVISIBLE.finditer(raw):
            c, i, j = m.group(), m.start(), m.end()
            before = raw[i - 1] if i else " "
            after = raw[j] if j < len(raw) else " "
            # Inside a Latin word it splits the word to slip past filters; overrides reorder text.
            if c in _BIDI_OVERRIDES or (before.isascii() and before.isalpha()
                                        and after.isascii() and after.isalpha()):
                suspicious += 1
        suspicious += len(_TAG_CHARS.findall(raw))  # tag characters
        if suspicious:
            score += min(1.0, suspicious / 3)
        if _GREEK_CYRILLIC.search(raw) and _MIXED_SCRIPT.search(raw):
            score += 0.5
    if "<" in raw or (":" in raw and _CSS_PROPERTY.search(raw)):
        score += min(1.0, len(_MARKUP.findall(raw)) / 2)
    return min(1.0, score)


def _embedded_instruction(raw: str) -> float:
    """1 when a table carries a line that asks its reader to do something (see the module doc)."""
    lines = [line.strip() for line in raw.splitlines() if line.strip()]
    table = sum(1 for line in lines if line.startswith("|") or line.count("|") >= 3)
    if table < 3:
        return 0.0
    for line in lines:
        if line.startswith("|") or line.count("|") >= 2:
            continue
        words = _WORD.findall(line)
        if 4 <= len(words) <= 60 and words[0].lower() in _TASK_VERBS:
            return 1.0
    return 0.0


def _mentions(text: str, literals: tuple[str, ...]) -> bool:
    return any(literal in text for literal in literals)


def document_features(raw: str, canonical: str, tokens: Iterable[str]) -> list[float]:
    """The ingest-time feature strengths of one document, in ``INGEST_FEATURES`` order.

    ``near_duplicate_burst`` is left at 0: only the pipeline, which sees the namespace, can set it.
    """
    # One scan of the tokens against every trigger (cheaper than three, or than a set of them);
    # the three trigger sets are then checked against the few hits.
    triggered = _TRIGGERS.intersection(tokens)
    override = directive = code = 0.0
    if not _OVERRIDE_TRIGGERS.isdisjoint(triggered) and _mentions(canonical, _OVERRIDE_LITERALS):
        override = min(1.0, len(_OVERRIDE.findall(canonical)) / 1)
    if not _DIRECTIVE_TRIGGERS.isdisjoint(triggered) and _mentions(canonical, _DIRECTIVE_LITERALS):
        directive = min(1.0, len(_DIRECTIVE.findall(canonical)) / 2)
    if not _CODE_TRIGGERS.isdisjoint(triggered) and _mentions(canonical, _CODE_LITERALS):
        code = min(1.0, len(_CODE.findall(canonical)) / 2)
    url = _url_risk(raw) if ("://" in raw or "data:" in raw or "javascript:" in raw) else 0.0
    embedded = _embedded_instruction(raw) if "|" in raw else 0.0
    return [override, directive, embedded, _hidden_risk(raw), url, code, 0.0]


@dataclass(frozen=True)
class PoisonModel:
    """A logistic combination of the named features, with the reasons that fired.

    Attributes:
        weights: one weight per name in :data:`FEATURES`.
        bias: the intercept; ``sigmoid(bias)`` is the score of a document where nothing fires.
        reason_floor: a feature is named as a reason when ``weight · strength`` reaches this.
        provenance: where the weights come from (``prior`` or a description of the fit).
    """

    weights: tuple[float, ...]
    bias: float
    reason_floor: float = 0.5
    provenance: str = "prior"
    _w: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.weights) != len(FEATURES):
            raise ConfigError(f"PoisonModel needs {len(FEATURES)} weights ({FEATURES}), got {len(self.weights)}")
        if not all(math.isfinite(w) for w in (*self.weights, self.bias)):
            raise ConfigError("PoisonModel weights must be finite")
        object.__setattr__(self, "_w", np.asarray(self.weights, dtype=np.float64))

    # -- scoring -------------------------------------------------------------------------------

    def score(self, features: Sequence[float]) -> tuple[float, tuple[str, ...]]:
        """``(poison_score, reasons)`` for one feature vector, reasons strongest first."""
        z = self.bias
        fired: list[tuple[float, str]] = []
        for name, w, x in zip(FEATURES, self.weights, features, strict=False):
            if x:
                c = w * x
                z += c
                if c >= self.reason_floor:
                    fired.append((c, name))
        fired.sort(reverse=True)
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z)))), tuple(name for _, name in fired)

    # -- calibration hook -----------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        *,
        l2: float = 1.0,
        sample_weight: np.ndarray | None = None,
        prior: PoisonModel | None = None,
        nonnegative: bool = True,
        provenance: str = "fitted",
        iterations: int = 50,
        ceilings: dict[str, float] | None = None,
        fixed: dict[str, float] | None = None,
        fit_bias: bool = True,
    ) -> PoisonModel:
        """Fit weights on labelled feature vectors (``y`` is 1 for poison) by regularised Newton steps.

        Args:
            x: ``(n, len(FEATURES))`` feature strengths.
            y: ``(n,)`` labels in {0, 1}.
            l2: ridge penalty on the weights (not the bias); keeps rare features from exploding.
            sample_weight: per-row weights, e.g. to balance attack families.
            prior: shrink towards these weights instead of towards 0 (a Gaussian prior). A feature
                the data never exercises — an attack family absent from the training set — then
                keeps its prior weight instead of losing it.
            nonnegative: every feature is evidence *for* poison; a weight the data pushes below 0
                (a feature that happened to fire only on clean text) is pinned at 0 and the rest
                refitted, so no attack can lower its own score by adding a signal.
            ceilings: an upper bound per feature name; a weight the data pushes above it is pinned
                there and the rest refitted. It keeps weak evidence (an echoed question, a code
                call, an HTML comment: all common in honest text) from reaching τ on its own.
            fixed: weights set by name and not fitted (a detector calibrated on clean corpora
                alone, whose weight must not depend on which attack families the data holds).
            fit_bias: when false the bias stays at the prior's (``ceilings`` are then exact).
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(FEATURES) or y.shape != (x.shape[0],):
            raise ConfigError(f"fit needs x of shape (n, {len(FEATURES)}) and y of shape (n,)")
        sw = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        a = np.hstack([np.ones((len(y), 1)), x])
        centre = np.zeros(a.shape[1])
        penalty = np.full(a.shape[1], l2)
        penalty[0] = 0.0
        if prior is not None:
            centre[0], centre[1:] = prior.bias, prior.weights
            # Clean text fires nothing, so the data alone would push the bias to -inf: hold it
            # near the prior's as well, more loosely than the weights.
            penalty[0] = l2 / 10
        free = np.ones(a.shape[1], dtype=bool)
        beta = centre.copy()
        cap = np.full(a.shape[1], np.inf)
        for name, ceiling in (ceilings or {}).items():
            cap[1 + FEATURE_INDEX[name]] = ceiling
        pinned = np.zeros(a.shape[1])  # the value of each weight that is not free
        if not fit_bias:
            free[0], pinned[0] = False, centre[0]
        for name, value in (fixed or {}).items():
            free[1 + FEATURE_INDEX[name]], pinned[1 + FEATURE_INDEX[name]] = False, value
        for _ in range(2 * len(FEATURES) + 1):  # active set: pin weights at their bounds, refit the rest
            beta = np.where(free, beta, pinned)
            for _ in range(iterations):
                p = 1.0 / (1.0 + np.exp(-np.clip(a @ beta, -50, 50)))
                grad = (a.T @ (sw * (p - y)) + penalty * (beta - centre))[free]
                hess = ((a * (sw * p * (1 - p))[:, None]).T @ a + np.diag(penalty + 1e-9))[np.ix_(free, free)]
                step = np.linalg.solve(hess, grad)
                beta[free] -= step
                if np.max(np.abs(step)) < 1e-8:
                    break
            negative = free & (beta < 0) if nonnegative else np.zeros_like(free)
            negative[0] = False
            above = free & (beta > cap)
            if not negative.any() and not above.any():
                break
            pinned = np.where(above, cap, np.where(negative, 0.0, pinned))
            free &= ~(negative | above)
        return cls(tuple(float(b) for b in beta[1:]), float(beta[0]), provenance=provenance)

    # -- the shipped artefact -------------------------------------------------------------------

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "features": list(FEATURES),
                "weights": dict(zip(FEATURES, self.weights, strict=True)),
                "bias": self.bias,
                "reason_floor": self.reason_floor,
                "provenance": self.provenance,
            },
            option=orjson.OPT_INDENT_2,
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> PoisonModel:
        raw = json.loads(data)
        weights = raw["weights"]
        unknown = set(weights) - set(FEATURES)
        if unknown:
            raise ConfigError(f"poison model names unknown features {sorted(unknown)}")
        return cls(
            tuple(float(weights.get(name, 0.0)) for name in FEATURES),
            float(raw["bias"]),
            reason_floor=float(raw.get("reason_floor", 0.5)),
            provenance=str(raw.get("provenance", "unknown")),
        )

    @classmethod
    def load(cls, path: str | Path) -> PoisonModel:
        return cls.from_json(Path(path).read_bytes())

    @classmethod
    def default(cls) -> PoisonModel:
        """The model shipped with the package (``guarded_retriever/data/poison_model.json``)."""
        return cls.from_json(resources.files("guarded_retriever").joinpath("data/poison_model.json").read_bytes())


def threshold_at_fpr(scores: np.ndarray, labels: np.ndarray, target_fpr: float) -> float:
    """The lowest τ whose false-positive rate on the negatives stays at or below ``target_fpr``.

    A document is flagged when ``score >= τ``, so τ sits just above the negative score that would
    push the false-positive rate over the target.
    """
    neg = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(labels) == 0])[::-1]
    if len(neg) == 0:
        return 0.0
    allowed = math.floor(target_fpr * len(neg))
    if allowed >= len(neg):
        return 0.0
    return float(np.nextafter(neg[allowed], np.inf))
