"""Claim conflict: a candidate whose slot values the rest of its query's pool contradicts.

Single-copy, same-topic poison (RobustRAG's biographies, one rewritten passage among honest web
snippets about the same person) has no siblings to cluster and does not echo the query; what gives it
away is *what it says*: it states a birth date, a birth place, a death year the other candidates for
the same query do not state, while several of them agree on a different value.

At ingest, :func:`extract_claims` pulls typed slot values out of the text with a handful of regular
expressions (no model):

* ``birth_date`` / ``death_date``: a full date (``May 7, 1971``, ``7 May 1971``) near *born* /
  *died*, or the first / second date of a ``(May 7, 1971 – June 2, 2020)`` lifespan; normalised
  to ``YYYY-MM-DD``;
* ``birth_year`` / ``death_year``: the year of those dates, or a bare year right after the trigger
  (``born in 1971``);
* ``birth_place`` / ``death_place``: the first capitalised name after ``in`` within the trigger's
  clause (``born ... in Clichy, France`` gives ``clichy``).

At query time, :func:`conflict_scores` compares each candidate's values with those of its *peers*:
the other candidates of the same query (one namespace) whose vectors are within cosine 0.5 of its
own, i.e. the passages about the same subject (a lone passage about a namesake then has no peers
instead of a contradicting majority). For a slot, a candidate is *contradicted* with support ``n``
when no peer states any of its values for that slot and ``n`` (≥ 2) peers state one same different
value; its score is the largest ``n`` over its slots. By default only the full dates are compared:
years and places conflict between honest passages far more often (a child's birth year, "Paris"
against "Clichy"). Cost: one small cosine matrix over the candidates that state a date, and a few
array operations per slot.

Measured on RobustRAG Biogen (``benchmarks/claim_conflict.py``, 50-candidate pools): 43 of the 50
poisoned biographies score ≥ 2 in their own query's pool, at 1.2 % of clean (query, candidate)
pairs; ≥ 2 fires on 0.4 % of clean Wikipedia-pool pairs and never on MS MARCO pools. The signal is
only as wide as the slots: in that set the wrong value is almost always the birth date, and a poison
whose dates agree with the pool (or lies about anything else) scores 0. PoisonedRAG lie-only
families are not caught (they do not lie about dates, and their copies corroborate each other).

What it is not: a fact checker. A passage about a relative or namesake close enough to count as a
peer, or an honest source that got a date wrong, scores like poison; a poison that copies the pool's consensus
values and lies about something else (an award, a book title) scores 0; and a family of ≥ 2 poison
copies asserting the same wrong value corroborates itself (that is what ``cluster_contrast`` is for).
Use the strength as one piece of evidence, not as a verdict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["DATE_SLOTS", "SLOTS", "Claims", "conflict_scores", "conflict_strength", "extract_claims"]

#: Slot types, in a fixed order.
SLOTS: tuple[str, ...] = (
    "birth_date", "birth_year", "birth_place", "death_date", "death_year", "death_place",
)

#: The slot types compared by default: full dates. Years and places also conflict between honest
#: passages (a namesake's birth year, "Paris" against "Clichy") far more often.
DATE_SLOTS: tuple[str, ...] = ("birth_date", "death_date")

#: A document's claims: slot type -> the normalised values it states (only non-empty slots).
Claims = Mapping[str, frozenset[str]]

_MONTHS = {
    m: i + 1
    for i, names in enumerate(
        [("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",),
         ("june", "jun"), ("july", "jul"), ("august", "aug"), ("september", "sep", "sept"),
         ("october", "oct"), ("november", "nov"), ("december", "dec")]
    )
    for m in names
}
_MON = r"(?:January|February|March|April|May|June|July|August|September|October|November|December|" \
       r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)\.?"
_YEAR = r"(1[0-9]{3}|20[0-9]{2})"
# Month D(st|nd|..), YYYY  |  D Month YYYY
_DATE = re.compile(
    rf"\b(?:({_MON})\s+([0-3]?[0-9])(?:st|nd|rd|th)?,?\s+{_YEAR}"
    rf"|([0-3]?[0-9])(?:st|nd|rd|th)?\s+(?:of\s+)?({_MON}),?\s+{_YEAR})\b"
)
#: Trigger words (lower case) and the event they introduce.
_TRIGGERS: tuple[tuple[str, str], ...] = (
    ("born", "birth"), ("birth", "birth"), ("died", "death"), ("death", "death"),
    ("passed away", "death"),
)
_BIRTH_SUFFIXES = ("day", "date", "place")
_MONTH_YEAR = re.compile(rf"\b{_MON}\s+(?:of\s+)?{_YEAR}\b")
_ANY_YEAR = re.compile(rf"\b{_YEAR}\b(?!\s*(?:BC|BCE|B\.C))")
_PLACE = re.compile(
    r"\b(?:in|at)\s+((?:the\s+)?[A-Z][\w'’.\-]*(?:\s+(?:de|del|da|do|of|upon|on|la|le|am|an)?\s*"
    r"[A-Z][\w'’.\-]*){0,3})"
)
_SENTENCE_END = re.compile(r"[.;!?](?=\s|$)|\n")
_LIFESPAN = re.compile(r"\(([^()]{0,80}?)\s*[–—-]+\s*([^()]{0,80}?)\)")
#: How far after a trigger its date, year or place may be (characters).
_WINDOW = 90
#: How far before a trigger a date may be when none follows it (characters).
_BACK_WINDOW = 60
_STOP_PLACE = frozenset({"the", "a", "an", "his", "her", "their", "this", "that"})


def _dates(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for m in _DATE.finditer(text):
        if m.group(1):
            mon, day, year = m.group(1), m.group(2), m.group(3)
        else:
            day, mon, year = m.group(4), m.group(5), m.group(6)
        d = int(day)
        if not 1 <= d <= 31:
            continue
        month = _MONTHS[mon.rstrip(".").lower()]
        out.append((m.start(), f"{year}-{month:02d}-{d:02d}"))
    return out


def _place(clause: str) -> str | None:
    for m in _PLACE.finditer(clause):
        words = [w for w in m.group(1).split() if w.lower() not in _STOP_PLACE]
        if not words:
            continue
        value = " ".join(words).lower().rstrip(".,'’")
        if value.rstrip(".") in _MONTHS:
            continue  # "born in October 1979 in Richmond"
        return value
    return None


_OTHER_EVENT = {
    "birth": re.compile(r"\b(?:died|death|passed away)\b", re.IGNORECASE),
    "death": re.compile(r"\b(?:born|birth)", re.IGNORECASE),
}


def _clause(text: str, end: int, kind: str) -> str:
    """The text after a trigger up to the sentence end or the other event's trigger."""
    window = text[end:end + _WINDOW]
    cut = _SENTENCE_END.search(window, 1)
    if cut:
        window = window[:cut.start()]
    other = _OTHER_EVENT[kind].search(window)
    return window[:other.start()] if other else window


def _clause_before(text: str, start: int) -> str:
    window = text[max(0, start - _BACK_WINDOW):start]
    cuts = list(_SENTENCE_END.finditer(window))
    return window[cuts[-1].end():] if cuts else window


def extract_claims(text: str) -> dict[str, frozenset[str]]:
    """Typed slot values stated by ``text`` (ingest time; regular expressions only).

    Only the clause after each trigger word (*born*, *birth*, *died*, *death*, *passed away*;
    up to the sentence end, at most 90 characters) and ``( … – … )`` lifespans are parsed, so the
    cost does not grow with the number of dates elsewhere in the text.

    Args:
        text: the document's text.

    Returns:
        A mapping from slot type (see :data:`SLOTS`) to the normalised values the text states for
        it; slots the text does not fill are absent. A date ``YYYY-MM-DD`` also yields its year.
    """
    found: dict[str, set[str]] = {}
    low = text.lower()
    for word, kind in _TRIGGERS:
        i = low.find(word)
        while i != -1:
            end = i + len(word)
            before_ok = i == 0 or not low[i - 1].isalnum()
            after = low[end:end + 5]
            if kind == "birth" and word == "birth" and after.startswith(_BIRTH_SUFFIXES):
                end += next(len(s) for s in _BIRTH_SUFFIXES if after.startswith(s))
                after = low[end:end + 1]
            if before_ok and not (after[:1].isalnum()):
                clause = _clause(text, end, kind)
                m = _DATE.search(clause)
                iso = None
                if m is not None:
                    iso = _dates(m.group(0))
                if not iso:
                    # "celebrated on May 7, 1971, as his date of birth": a date just before, same clause
                    back = _clause_before(text, i)
                    hits = _dates(back)
                    iso = hits[-1:] if hits else None
                if iso:
                    found.setdefault(f"{kind}_date", set()).add(iso[0][1])
                    found.setdefault(f"{kind}_year", set()).add(iso[0][1][:4])
                else:
                    ys = [y for y in (_MONTH_YEAR.search(clause), _ANY_YEAR.search(clause)) if y]
                    if ys:
                        y = min(ys, key=lambda m: m.start())
                        found.setdefault(f"{kind}_year", set()).add(y.group(1))
                if word != "death":
                    p = _place(clause)
                    if p is not None:
                        found.setdefault(f"{kind}_place", set()).add(p)
            i = low.find(word, i + 1)
    if "(" in text:
        for m in _LIFESPAN.finditer(text):
            a, b = _dates(m.group(1)), _dates(m.group(2))
            if a and b:
                for slot, value in (("birth_date", a[0][1]), ("birth_year", a[0][1][:4]),
                                    ("death_date", b[0][1]), ("death_year", b[0][1][:4])):
                    found.setdefault(slot, set()).add(value)
    return {k: frozenset(v) for k, v in found.items()}


def conflict_scores(
    pool: Sequence[Claims],
    vectors: np.ndarray | None = None,
    *,
    peer_cosine: float = 0.5,
    slots: Sequence[str] = DATE_SLOTS,
    min_support: int = 2,
) -> list[int]:
    """Per candidate, how many of its peers agree on a value that contradicts it.

    A candidate's *peers* are the other candidates whose vectors have cosine ``>= peer_cosine``
    with its own (the passages about the same subject; all other candidates when ``vectors`` is
    None). For each slot type, a candidate that states values ``V`` for it is contradicted when no
    peer states any value in ``V`` and at least ``min_support`` peers state one same value outside
    ``V``; its support is the number of those peers. The score is the largest support over slot
    types, 0 when it is contradicted nowhere.

    Args:
        pool: the claims of one query's candidates (one namespace); order is unused.
        vectors: ``(len(pool), d)`` L2-normalised candidate vectors, or None.
        peer_cosine: the least cosine between two candidates that makes them peers.
        slots: the slot types to compare.
        min_support: the least number of agreeing peers that counts as a consensus.

    Returns:
        One integer per candidate, in ``pool`` order.
    """
    n = len(pool)
    scores = [0] * n
    stating = [i for i, claims in enumerate(pool) if any(slot in claims for slot in slots)]
    if len(stating) < min_support + 1:
        return scores
    m = len(stating)
    if vectors is None:
        peers = np.ones((m, m), dtype=np.float32)
    else:
        sub = np.asarray(vectors, dtype=np.float32)[stating]
        peers = (sub @ sub.T >= peer_cosine).astype(np.float32)
    np.fill_diagonal(peers, 0.0)
    best = np.zeros(m, dtype=np.float32)
    for slot in slots:
        column: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        for r, i in enumerate(stating):
            values = pool[i].get(slot)
            if values:
                for v in values:
                    rows.append(r)
                    cols.append(column.setdefault(v, len(column)))
        if len(column) < 2 or len(rows) < min_support + 1:
            continue
        stated = np.zeros((m, len(column)), dtype=np.float32)
        stated[rows, cols] = 1.0
        support = peers @ stated  # how many peers of row r state value v
        own = support * stated
        corroborated = own.max(axis=1) > 0
        support -= own  # support for the values row r does not state
        against = support.max(axis=1)
        hit = (stated.max(axis=1) > 0) & ~corroborated & (against >= min_support)
        np.maximum(best, np.where(hit, against, 0.0), out=best)
    for r, i in enumerate(stating):
        scores[i] = int(best[r])
    return scores


def conflict_strength(score: int, *, floor: int = 1, ceiling: int = 4) -> float:
    """Map a :func:`conflict_scores` support onto ``[0, 1]``: 0 at ``floor`` or less, 1 at ``ceiling``."""
    if score <= floor:
        return 0.0
    if score >= ceiling:
        return 1.0
    return (score - floor) / (ceiling - floor)
