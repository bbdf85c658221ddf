"""BM25 against rank_bm25, FAISS index kinds, embedders."""

from __future__ import annotations

import random

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

import guarded_retriever as gr
from guarded_retriever._bm25 import BM25Shard
from guarded_retriever._dense import DenseShard


def corpus(seed: int, n: int = 300) -> list[list[str]]:
    rng = random.Random(seed)
    vocab = [f"t{i}" for i in range(400)]
    weights = [1 / (i + 1) for i in range(len(vocab))]  # Zipf-like, so some terms have df > N/2
    return [rng.choices(vocab, weights, k=rng.randint(3, 40)) for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k1, b", [(1.5, 0.75), (1.2, 0.3), (2.0, 1.0)])
def test_bm25_scores_match_rank_bm25(seed, k1, b):
    docs = corpus(seed)
    reference = BM25Okapi(docs, k1=k1, b=b)
    shard = BM25Shard(k1=k1, b=b)
    for d in docs:
        shard.add(d)
    rng = random.Random(seed + 100)
    queries = [["t0"], ["t0", "t1", "t350"], ["t5", "t5", "t77"], ["nope"]]
    queries += [rng.sample([f"t{i}" for i in range(400)], 4) for _ in range(20)]
    for q in queries:
        expected = reference.get_scores(q)
        rows, scores = shard.scores(q)
        got = np.zeros(len(docs))
        got[rows] = scores
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        top_rows, top_scores = shard.top(q, 10)
        positive = expected[expected > 0]
        assert len(top_rows) == min(10, len(positive))
        np.testing.assert_allclose(top_scores, np.sort(positive)[::-1][:10], rtol=1e-5)


def test_bm25_removed_rows_leave_the_statistics():
    docs = corpus(9, 50)
    shard = BM25Shard()
    for d in docs:
        shard.add(d)
    for r in range(0, 50, 2):
        shard.remove(r)
    survivors = [docs[r] for r in range(1, 50, 2)]
    reference = BM25Okapi(survivors)
    rows, scores = shard.scores(["t3", "t40"])
    assert set(rows.tolist()) <= set(range(1, 50, 2))
    expected = reference.get_scores(["t3", "t40"])
    got = dict(zip(rows.tolist(), scores.tolist(), strict=True))
    np.testing.assert_allclose([got.get(r, 0.0) for r in range(1, 50, 2)], expected, rtol=1e-5, atol=1e-5)


def _filled(docs: list[list[str]]) -> BM25Shard:
    shard = BM25Shard()
    for d in docs:
        shard.add(d)
    return shard


@pytest.mark.parametrize("n", [300, 6000])  # 6000: past the sampled top-k's minimum
def test_bm25_dense_columns_give_the_postings_scores_bit_for_bit(monkeypatch, n):
    docs = corpus(n, n)
    with_columns = _filled(docs)
    for r in range(0, n, 7):
        with_columns.remove(r)
    rng = random.Random(n)
    queries = [["t0", "t1", "t2"], ["t0", "t0", "t9"], ["t1", "t350"]]
    queries += [[*rng.sample([f"t{i}" for i in range(400)], 2), "t0"] for _ in range(15)]
    got = [(with_columns.scores(q), with_columns.top_with(q, 10, np.arange(0, n, 11, dtype=np.int32)))
           for q in queries]
    assert len(with_columns._columns) > 0  # Zipf's head terms are in more than a quarter of the rows
    terms, tfs = with_columns.term_lists(range(n))
    restored = BM25Shard.restore(with_columns.vocabulary(), np.concatenate(terms), np.concatenate(tfs),
                                 np.cumsum([0, *map(len, terms)]), with_columns.postings(), k1=1.5, b=0.75)
    np.testing.assert_array_equal(restored._columns, with_columns._columns)  # a loaded index has them too

    monkeypatch.setattr("guarded_retriever._bm25._COLUMN_SHARE", 0)  # no term qualifies
    without = _filled(docs)
    for r in range(0, n, 7):
        without.remove(r)
    assert len(without._columns) == 0
    for q, ((rows, scores), top) in zip(queries, got, strict=True):
        want_rows, want_scores = without.scores(q)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(scores, want_scores)  # exact: the column adds 0.0 elsewhere
        for a, b in zip(top, without.top_with(q, 10, np.arange(0, n, 11, dtype=np.int32)), strict=True):
            np.testing.assert_array_equal(a, b)
        assert not set(want_rows.tolist()) & set(range(0, n, 7))  # removed rows match nothing


@pytest.mark.parametrize("n", [300, 6000])  # 6000: the sampled top-k's path
def test_bm25_ties_at_the_kth_place_go_to_the_lower_rows(n):
    # A few distinct documents, each repeated many times: every score is tied with hundreds of
    # others, so the k-th place always is. The answer must be the reference order's head, by
    # score then row, on every path (the sampled top-k, its fallback, the postings path).
    rng = random.Random(n)
    templates = [rng.choices(["t0", "t1", "t2", "t3", "t4", "t5", *[f"u{i}" for i in range(30)]], k=rng.randint(3, 9))
                 for _ in range(12)]
    docs = [list(templates[rng.randrange(len(templates))]) for _ in range(n)]
    shard = _filled(docs)
    also = np.arange(0, n, 13, dtype=np.int32)
    for q in (["t0", "t1"], ["t0", "t1", "t2", "t3"], ["t5", "u3"], ["u1", "u2", "u7"], ["t0"]):
        rows, scores = shard.scores(q)
        order = np.lexsort((rows, -scores))
        positive = order[scores[order] > 0]
        for k in (1, 10, 50):
            want_rows, want_scores = rows[positive][:k], scores[positive][:k]
            assert len(set(scores[positive][: k + 1].tolist())) < k + 1  # ties among the first k + 1
            top_rows, top_scores = shard.top(q, k)
            np.testing.assert_array_equal(top_rows, want_rows)
            np.testing.assert_array_equal(top_scores, want_scores)
            with_rows, with_scores, also_scores = shard.top_with(q, k, also)
            np.testing.assert_array_equal(with_rows, want_rows)
            np.testing.assert_array_equal(with_scores, want_scores)
            dense = np.zeros(n, dtype=np.float32)
            dense[rows] = scores
            np.testing.assert_array_equal(also_scores, dense[also])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_dense_kinds_find_the_nearest_and_skip_deleted_rows(kind):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    shard = DenseShard(32, kind=kind)
    shard.add(vectors)
    rows, scores = shard.search(vectors[7], 5)
    assert rows[0] == 7 and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert shard.resolved_kind() == kind
    shard.remove(7)
    rows, _ = shard.search(vectors[7], 5)
    assert 7 not in rows.tolist() and len(rows) == 5


def test_auto_kind_switches_to_ivf_when_large():
    shard = DenseShard(8, kind="auto", ivf_threshold=100)
    rng = np.random.default_rng(1)
    v = rng.normal(size=(150, 8)).astype(np.float32)
    shard.add(v / np.linalg.norm(v, axis=1, keepdims=True))
    assert shard.resolved_kind() == "ivf"
    rows, _ = shard.search(shard.vectors[3], 3)
    assert rows[0] == 3


def test_hashing_embedder_is_deterministic_and_lexical():
    e = gr.HashingEmbedder(dim=64)
    a, b = e.embed_documents(["reset the password", "Reset  the PASSWORD"])
    np.testing.assert_array_equal(a, b)
    assert e.embed_query("x").shape == (64,)


def test_any_embedder_shape_is_adapted():
    calls = []

    def fn(texts):
        calls.append(texts)
        return [[1.0, float(len(t))] for t in texts]

    class LlamaLike:
        def get_text_embedding_batch(self, texts):
            return [[1.0, 2.0] for _ in texts]

        def get_query_embedding(self, text):
            return [1.0, 2.0]

    for embedder in (fn, LlamaLike(), gr.HashingEmbedder(dim=2 * 8)):
        index = gr.GuardedIndex(embedder, policy=gr.TrustPolicy(manifest_required=False))
        ns = {"tenant_id": "t", "product_id": "p", "env": "e"}
        index.add([("a", "hello world")], namespace=ns)
        assert [h.id for h in index.search("hello", namespace=ns, k=1).kept] == ["a"]
    with pytest.raises(gr.ConfigError):
        gr.as_embedder(42)


def test_model_file_is_verified_before_loading(tmp_path):
    from guarded_retriever._embed import MINILM_SHA256, verify_model_file

    f = tmp_path / "model.safetensors"
    f.write_bytes(b"not the model")
    with pytest.raises(gr.IntegrityError, match="sha256"):
        verify_model_file(f, MINILM_SHA256)
    with pytest.raises(gr.IntegrityError, match="missing"):
        verify_model_file(tmp_path / "absent", "0" * 64)


@pytest.mark.embed
def test_minilm_embedder_loads_the_pinned_model_offline():
    pytest.importorskip("sentence_transformers")
    embedder = gr.MiniLMEmbedder()
    vecs = embedder.embed_documents(["How do I reset my password?", "Password reset instructions",
                                     "The giraffe is the tallest land animal."])
    assert vecs.shape == (3, 384)
    assert float(vecs[0] @ vecs[1]) > float(vecs[0] @ vecs[2]) + 0.2
