"""Okapi BM25 over postings, one index per namespace.

The variant is rank_bm25's ``BM25Okapi`` (what LangChain's ``BM25Retriever`` uses), so scores are
directly comparable with it (a differential test checks this):

    idf(t)   = ln(N − df + 0.5) − ln(df + 0.5), and a negative idf (df > N/2) is replaced by
               ε · mean(idf over the vocabulary) with ε = 0.25
    score    = Σ_{t in query} idf(t) · tf·(k1 + 1) / (tf + k1·(1 − b + b·dl/avgdl))

A query term repeated in the query counts once per occurrence, as in rank_bm25.

Each namespace has its own statistics (N, avgdl, df). That is part of the fence: with a shared
index, one tenant's idf would reveal which terms another tenant's documents contain.

Query cost is proportional to the postings of the query terms: the weights ``idf · tf-norm`` are
precomputed into a term-major CSR (rebuilt once after a write, lazily) and the query's postings are
summed per document into a float32 accumulator. Short postings are tracked row by row; once they
reach an eighth of the shard, one pass over the whole accumulator is cheaper, and that is what a
query with frequent terms in a large shard gets. A term found in a quarter of the rows or more is
also kept as a dense column of weights: adding it is one vectorised pass (~0.2 ns a row), where
scattering its postings costs ~2.5 ns each, and such terms hold most of a typical query's postings
(85–93 % at 100k documents). The top-k is an ``argpartition`` over the matched rows only.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise

import numpy as np

__all__ = ["BM25Shard", "top_k"]

_EPSILON = 0.25
# Above one posting per ``_DENSE_SHARE`` rows, a query is scored over the whole accumulator.
_DENSE_SHARE = 8
# A term in at least one row of ``_COLUMN_SHARE`` is also stored as a dense column. Its column then
# takes at most twice its postings' bytes (4 bytes a row against 8 a posting); the cap bounds the
# rest (a shard of near-identical documents).
_COLUMN_SHARE = 4
_MAX_COLUMNS = 64


class BM25Shard:
    """An append-only BM25 index over rows ``0..n-1``; dead rows are excluded from statistics."""

    __slots__ = (
        "_alive",
        "_column_of",
        "_columns",
        "_dirty",
        "_doc_terms",
        "_indptr",
        "_local",
        "_positive",
        "_postings",
        "_vocab",
        "_weights",
        "b",
        "k1",
    )

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self._vocab: dict[str, int] = {}
        self._doc_terms: list[tuple[np.ndarray, np.ndarray]] = []  # per row: (term ids, counts)
        self._alive: list[bool] = []
        self._dirty = True
        self._indptr = np.zeros(1, dtype=np.int64)
        self._postings = np.zeros(0, dtype=np.int32)
        self._weights = np.zeros(0, dtype=np.float32)
        self._positive = True  # every posting weight > 0: a row matched iff its accumulator is > 0
        self._columns = np.zeros((0, 0), dtype=np.float32)  # dense weights of the most frequent terms
        self._column_of: dict[int, int] = {}  # a column term's first posting offset → its column
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self._doc_terms)

    def add(self, tokens: Sequence[str]) -> int:
        """Append a document; returns its row."""
        counts = Counter(tokens)
        vocab = self._vocab
        ids = np.fromiter((vocab.setdefault(t, len(vocab)) for t in counts), dtype=np.int32,
                          count=len(counts))
        self._doc_terms.append((ids, np.fromiter(counts.values(), dtype=np.float32, count=len(counts))))
        self._alive.append(True)
        self._dirty = True
        return len(self._doc_terms) - 1

    @classmethod
    def restore(cls, vocabulary: list[str], terms: np.ndarray, tfs: np.ndarray, offsets: np.ndarray,
                csr: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, *, k1: float, b: float) -> BM25Shard:
        """Rebuild from :meth:`vocabulary`, :meth:`term_lists` and :meth:`postings` output, without
        re-tokenising (and, given the saved postings, without re-indexing)."""
        shard = cls(k1=k1, b=b)
        shard._vocab = {t: i for i, t in enumerate(vocabulary)}
        bounds = offsets.tolist()
        shard._doc_terms = [(terms[s:e], tfs[s:e]) for s, e in pairwise(bounds)]
        shard._alive = [True] * len(shard._doc_terms)
        if csr is not None and len(csr[0]) == len(vocabulary) + 1:
            shard._indptr, shard._postings, shard._weights = csr
            shard._positive = bool((shard._weights > 0).all())
            shard._build_columns()
            shard._dirty = False
        return shard

    def postings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(indptr, postings, weights)``: the scored postings, current with every add and remove."""
        if self._dirty:
            self._rebuild()
        return self._indptr, self._postings, self._weights

    def vocabulary(self) -> list[str]:
        """Terms by id."""
        return list(self._vocab)

    def term_lists(self, rows: Sequence[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``(term ids, term counts)`` of the given rows."""
        return [self._doc_terms[r][0] for r in rows], [self._doc_terms[r][1] for r in rows]

    def remove(self, row: int) -> None:
        if self._alive[row]:
            self._alive[row] = False
            self._dirty = True

    def _rebuild(self) -> None:
        rows = [i for i, alive in enumerate(self._alive) if alive]
        n_terms = len(self._vocab)
        if not rows:
            self._indptr = np.zeros(n_terms + 1, dtype=np.int64)
            self._postings = np.zeros(0, dtype=np.int32)
            self._weights = np.zeros(0, dtype=np.float32)
            self._positive = True
            self._build_columns()
            self._dirty = False
            return
        term_ids = np.concatenate([self._doc_terms[r][0] for r in rows])
        tfs = np.concatenate([self._doc_terms[r][1] for r in rows]).astype(np.float64)
        lengths = np.array([self._doc_terms[r][1].sum() for r in rows], dtype=np.float64)
        doc_rows = np.repeat(np.asarray(rows, dtype=np.int32), [len(self._doc_terms[r][0]) for r in rows])
        doc_len = np.repeat(lengths, [len(self._doc_terms[r][0]) for r in rows])
        n = len(rows)
        avgdl = float(lengths.mean())
        df = np.bincount(term_ids, minlength=n_terms).astype(np.float64)
        present = df > 0
        idf = np.zeros(n_terms)
        idf[present] = np.log(n - df[present] + 0.5) - np.log(df[present] + 0.5)
        # rank_bm25 averages idf over the terms of the corpus, negative ones included, then floors.
        mean_idf = float(idf[present].mean())
        idf[present & (idf < 0)] = _EPSILON * mean_idf
        norm = tfs * (self.k1 + 1) / (tfs + self.k1 * (1 - self.b + self.b * doc_len / avgdl))
        weights = idf[term_ids] * norm
        order = np.argsort(term_ids, kind="stable")
        self._postings = doc_rows[order]
        self._weights = weights[order].astype(np.float32)
        # float32 sums of positive weights stay positive, so then the accumulator itself tells
        # which rows matched (a zero or negative idf, possible in tiny shards, needs the bitmap).
        self._positive = bool((self._weights > 0).all())
        self._indptr = np.zeros(n_terms + 1, dtype=np.int64)
        self._indptr[1:] = np.cumsum(df.astype(np.int64))
        self._build_columns()
        self._dirty = False

    def _build_columns(self) -> None:
        """Dense weight columns of the terms in ≥ 1/``_COLUMN_SHARE`` of the rows, from the postings."""
        n = len(self._doc_terms)
        df = np.diff(self._indptr)
        terms = np.flatnonzero((df > 0) & (df * _COLUMN_SHARE >= n))
        terms = terms[np.argsort(-df[terms], kind="stable")][:_MAX_COLUMNS]
        columns = np.zeros((len(terms), n), dtype=np.float32)
        column_of = {}
        for j, t in enumerate(terms.tolist()):
            s, e = int(self._indptr[t]), int(self._indptr[t + 1])
            columns[j, self._postings[s:e]] = self._weights[s:e]  # a row holds a term once
            column_of[s] = j  # df > 0, so no other term starts at this offset
        self._columns, self._column_of = columns, column_of

    def _spans(self, query_tokens: Sequence[str]) -> list[tuple[int, int]]:
        if self._dirty:
            self._rebuild()
        vocab, indptr = self._vocab, self._indptr
        # A repeated query term counts once per occurrence, as in rank_bm25.
        return [(int(indptr[i]), int(indptr[i + 1])) for i in (vocab[t] for t in query_tokens if t in vocab)]

    def _scratch(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-thread accumulators, one slot per row, all zero between calls."""
        local = self._local
        acc = getattr(local, "acc", None)
        n = len(self._doc_terms)
        if acc is None or len(acc) < n:
            local.acc = acc = np.zeros(max(n, 1024) * 2, dtype=np.float32)
            local.seen = np.zeros(len(acc), dtype=bool)
        return acc, local.seen

    def _whole_pass(self, spans: Sequence[tuple[int, int]]) -> bool:
        """Long postings (frequent terms, a large shard): touching every row once is cheaper than
        tracking which rows were touched."""
        return sum(e - s for s, e in spans) * _DENSE_SHARE >= len(self._doc_terms)

    @contextmanager
    def _summed(self, spans: Sequence[tuple[int, int]], seen: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """The accumulator's live rows with every span's weights added (a column term's as one
        dense add, the others by ``np.add.at``, numpy's fast unbuffered path on same-dtype
        float32), marking touched rows in ``seen`` if given; both are zero again on exit, whatever
        happened."""
        acc, _ = self._scratch()
        n = len(self._doc_terms)
        postings, weights = self._postings, self._weights
        columns, column_of = self._columns, self._column_of
        live = acc[:n]
        try:
            for s, e in spans:
                j = column_of.get(s)
                if j is None:
                    np.add.at(acc, postings[s:e], weights[s:e])
                else:  # bit for bit the same sums: the other rows add an exact 0.0
                    np.add(live, columns[j], out=live)
                if seen is not None:
                    seen[postings[s:e]] = True
            yield live
        finally:
            acc[:n] = 0.0
            if seen is not None:
                seen[:n] = False

    def scores(
        self, query_tokens: Sequence[str], also: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)`` of every live document matching at least one query term.

        Term at a time into a per-thread accumulator: the work is proportional to the postings
        of the query's terms (plus one pass over the accumulator when those exceed an eighth of
        the shard), and nothing is sorted.

        With ``also``, the exact scores of those rows (0 where nothing matches) are appended to
        the result, rows first: the retrieval core reads its dense candidates' BM25 scores this
        way, out of the same accumulator, for free.
        """
        spans = self._spans(query_tokens)
        extra = also if also is not None else np.zeros(0, dtype=np.int32)
        if not spans:
            return (np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)) if also is None else (
                extra, np.zeros(len(extra), dtype=np.float32))
        postings, weights = self._postings, self._weights
        if len(spans) == 1 and also is None:
            s, e = spans[0]
            return postings[s:e], weights[s:e]
        acc, seen = self._scratch()
        if self._whole_pass(spans):  # the matched rows come back in row order
            if self._positive:  # no ``seen`` bitmap to scatter into: matched iff accumulated > 0
                with self._summed(spans) as live:
                    mask = live > 0
                    matched = np.flatnonzero(mask).astype(np.int32)
                    if not len(extra):
                        return matched, live[mask]
                    return np.concatenate([matched, extra]), np.concatenate([live[mask], live[extra]])
            with self._summed(spans, seen) as live:
                matched = np.flatnonzero(seen[: len(live)]).astype(np.int32)
                rows = np.concatenate([matched, extra]) if len(extra) else matched
                return rows, live[rows]
        parts: list[np.ndarray] = []
        try:
            for s, e in spans:
                rows = postings[s:e]
                fresh = rows[~seen[rows]]  # a posting list holds each row once, so += is exact
                seen[fresh] = True
                parts.append(fresh)
                acc[rows] += weights[s:e]
            rows = np.concatenate([*parts, extra])
            return rows, acc[rows]
        finally:  # the accumulators are all zero again, whatever happened
            touched = np.concatenate(parts) if parts else extra
            acc[touched] = 0.0
            seen[touched] = False

    def top(self, query_tokens: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(rows, scores)`` by descending score; only rows with a positive score."""
        return top_k(*self.scores(query_tokens), k)

    def top_with(
        self, query_tokens: Sequence[str], k: int, also: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``top(query_tokens, k)`` plus the exact scores of the rows ``also`` (0 where nothing
        matches): what ``scores(query_tokens, also=also)`` followed by :func:`top_k` over the
        matched rows gives, bit for bit.

        On the whole-accumulator path (long postings, every weight positive) the top-k is taken
        from the accumulator itself, so the ~N matched rows are never gathered into arrays; too
        few matches for the sampled lower bound fall back to exactly that gather and
        :func:`top_k`, which applies the same tie rule.
        """
        spans = self._spans(query_tokens)
        if not (spans and self._positive and self._whole_pass(spans)):
            rows, scored = self.scores(query_tokens, also=also)
            n_matched = len(rows) - len(also)
            return (*top_k(rows[:n_matched], scored[:n_matched], k), scored[n_matched:])
        with self._summed(spans) as live:
            also_scores = live[also]
            picked = _sampled_top(live, k)
            if picked is None:
                mask = live > 0
                return (*top_k(np.flatnonzero(mask).astype(np.int32), live[mask], k), also_scores)
            rows = picked.astype(np.int32)
            top_scores = live[rows]
            order = np.lexsort((rows, -top_scores))
            return rows[order], top_scores[order], also_scores


def top_k(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best positive ``(rows, scores)`` of a candidate set, best first; equal scores
    are ordered by row, and a tie at the k-th place goes to the lower rows.

    ``argpartition`` runs over the candidates only, never over all N documents.
    """
    if len(rows) > k:
        # The k largest first, positive or not: if one of them is not positive, every positive
        # score is among them already. Cheaper than filtering all candidates when most match.
        part = _largest(scores, k, rows)
        rows, scores = rows[part], scores[part]
    positive = scores > 0
    if not positive.all():
        rows, scores = rows[positive], scores[positive]
    order = np.lexsort((rows, -scores))  # ties broken by row, so results are deterministic
    return rows[order], scores[order]


# Below this many candidates one ``argpartition`` is as cheap as the sampled pre-filter.
_SAMPLED_MIN = 4096
_SAMPLE_STRIDE = 16


def _sampled_top(scores: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray | None:
    """:func:`_largest` when all of the ``k`` largest scores are positive, found among the few
    candidates above a lower bound; ``None`` when they are not, or the input is too small to gain.

    A strided sample's k-th largest score ``L`` is a lower bound of the k-th largest overall, so
    every top-k score is ``≥ L`` and the selection runs over those few candidates only.
    """
    m = len(scores)
    if m < _SAMPLED_MIN or k * _SAMPLE_STRIDE * 4 > m:
        return None
    sample = scores[::_SAMPLE_STRIDE]
    floor = np.partition(sample, len(sample) - k)[len(sample) - k]
    if not floor > 0:
        return None
    cand = np.flatnonzero(scores >= floor)
    return _settle(cand, scores[cand], k, rows)


def _largest(scores: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Positions of the ``k`` largest scores; of the positions tied at the k-th place, those with
    the lowest ``rows[p]`` (the lowest positions when ``rows`` is ``None``).

    The tie rule makes the set a function of the scores alone: ``argpartition``'s own choice among
    tied values depends on the whole array, so the sampled path could not reproduce it and fell
    back on a full partition of ~N rows (about 6 % of the queries at 100k, 0.5 ms each).
    """
    chosen = _sampled_top(scores, k, rows)
    if chosen is not None:
        return chosen
    return _settle(np.arange(len(scores)), scores, k, rows)


def _settle(positions: np.ndarray, sub: np.ndarray, k: int, rows: np.ndarray | None) -> np.ndarray:
    """The ``k`` best of ``positions`` (ascending, scored ``sub``, holding every position that
    scores at least the k-th best) under the tie rule of :func:`_largest`."""
    part = np.argpartition(sub, len(sub) - k)[len(sub) - k :]
    kth = sub[part].min()
    if int(np.count_nonzero(sub >= kth)) == k:  # no tie at the k-th place: the usual case
        chosen: np.ndarray = positions[part]
        return chosen
    above = positions[sub > kth]
    tied = positions[sub == kth]  # ascending, as ``positions`` is
    if rows is not None:
        tied = tied[np.argsort(rows[tied], kind="stable")]
    return np.concatenate([above, tied[: k - len(above)]])
