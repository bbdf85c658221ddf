"""Side by side with the peers: the same corpus, the same vectors, queries interleaved in one process.

Usage (from the project root; about 12-20 minutes for both sizes on a 2-core machine):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers.py --sizes 10000 100000

Stacks, all with k = 10 and one OpenMP thread:
  ours/langchain   guarded_retriever.langchain.GuardedRetriever.invoke, every guard on
  ours/llamaindex  guarded_retriever.llamaindex.GuardedRetriever.retrieve, every guard on
  ours/core        GuardedIndex.search, the core both faces wrap (for the face overhead), on its
                   own index: a stack sharing a face's arrays would find them warm after it
  raw              the floor: bm25s get_scores + top-k over the non-zero scores, FAISS, dict RRF
                   (c = 60), on the same FAISS index kind and parameters as ours at that size
  langchain        EnsembleRetriever(BM25Retriever, FAISS.as_retriever()) [0.5, 0.5], defaults
                   (rank_bm25, IndexFlatL2)
  llamaindex       QueryFusionRetriever(BM25Retriever, FaissVectorStore(IndexFlatIP)),
                   num_queries=1, reciprocal_rerank, use_async=False
  ... (IVF)        at sizes above 20k also the two peers over the IVF index ours uses there
  tax/langchain    a LangChain BaseRetriever that returns [] at once: what invoke() alone costs
  tax/llamaindex   a LlamaIndex BaseRetriever that embeds the query through the LlamaIndex
                   embedding (as every LlamaIndex vector retriever does) and returns []: what
                   retrieve() and the embedding call cost before any retrieval work

10k is the red-team dev bundle (10,702 documents, real all-MiniLM-L6-v2 vectors, its 130 query
texts and vectors), all in one namespace so that every stack searches the same 10,702 documents.
100k is ``query_latency.synthetic`` (seeded Zipfian text around clustered vectors).

Embedding: one dict look-up embedder returns the precomputed vectors (``list[float]``, as the real
interfaces do) for documents and queries, in every stack; no model runs. Ours ingests signed
batches of 1,000 (signed before the clock: signing is the crawler's job) through the full guard.

Latency: every query runs through every stack, in a seeded random order drawn afresh per query (so
no stack always follows the same neighbour), so machine noise hits all alike; ratios are of
medians from this one run. Each stack runs each query twice in a row: the first call ("after
another stack") finds the CPU caches as another stack left them (after EnsembleRetriever's 0.2 s
query, nothing of ours is cached), the second ("repeated") finds its own working set cached, as in
a loop serving queries. Both are reported, and the targets are checked on both. The first call
is also split by what ran just before it (a peer, or one of the light stacks) to show how much of
its cost is the caches another stack emptied.

Build time is construction plus the first query (lazy index builds included). Peak RSS cannot
be told apart inside one process, so each stack is built and queried again in its own child
process (``--rss-only STACK``), which loads the same cached data the same way and reports its
``VmHWM``.

Also: the guard's per-query cost by step (``GuardedIndex.search`` with timing wrappers installed
by this script only), ingest throughput (``ingest_throughput.py``), and save / load of a signed
100k index, each in a fresh process.

Writes the JSON to ``--json`` (default benchmarks/results/peers.json) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

K = 10
NS = {"tenant_id": "bench", "product_id": "peers", "env": "dev"}
BATCH = 1000
IVF_THRESHOLD = 20_000  # GuardConfig's "auto": flat up to 20k vectors per namespace, IVF above
DEFAULT_BUNDLE = HERE.parents[1] / "shared/redteam/dev"
_WORD = re.compile(r"\w+")


# -- data ------------------------------------------------------------------------------------------


def prepare_data(size: int, n_queries: int, bundle: Path, cache: Path) -> Path:
    """Write the corpus, the vectors and the queries of one size to ``cache`` (once)."""
    out = cache / f"n{size}_q{n_queries}"
    if (out / "done").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    if size <= 20_000:
        from guarded_retriever.redteam import load_bundle

        b = load_bundle(bundle)
        docs, queries = b.docs, b.queries
        dvec, qvec = np.asarray(b.doc_vectors, np.float32), np.asarray(b.query_vectors, np.float32)
    else:
        from query_latency import synthetic

        docs, queries, dvec, qvec = synthetic(size, n_queries=n_queries)
    queries, qvec = queries[:n_queries], qvec[:n_queries]
    (out / "docs.json").write_text(json.dumps([[d["_id"], d["text"]] for d in docs]))
    (out / "queries.json").write_text(json.dumps([q["text"] for q in queries]))
    np.save(out / "doc_vectors.npy", np.ascontiguousarray(dvec, np.float32))
    np.save(out / "query_vectors.npy", np.ascontiguousarray(qvec, np.float32))
    (out / "done").write_text("ok")
    return out


class Data:
    def __init__(self, path: Path) -> None:
        pairs = json.loads((path / "docs.json").read_text())
        self.ids: list[str] = [p[0] for p in pairs]
        self.texts: list[str] = [p[1] for p in pairs]
        self.queries: list[str] = json.loads((path / "queries.json").read_text())
        self.doc_vectors: np.ndarray = np.load(path / "doc_vectors.npy")
        self.query_vectors: np.ndarray = np.load(path / "query_vectors.npy")
        self.dim = self.doc_vectors.shape[1]


class DictEmbeddings:
    """The one embedder of every stack: precomputed vectors by text, as ``list[float]``."""

    def __init__(self, data: Data) -> None:
        self._docs = {t: i for i, t in enumerate(data.texts)}
        self._vectors = data.doc_vectors
        self._queries = {q: data.query_vectors[i].tolist() for i, q in enumerate(data.queries)}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        rows = [self._docs[t] for t in texts]
        out: list[list[float]] = self._vectors[rows].tolist()
        return out

    def embed_query(self, text: str) -> list[float]:
        return self._queries[text]


def langchain_embeddings(e: DictEmbeddings) -> Any:
    from langchain_core.embeddings import Embeddings

    class LCDict(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return e.embed_documents(texts)

        def embed_query(self, text: str) -> list[float]:
            return e.embed_query(text)

    return LCDict()


def llamaindex_embedding(e: DictEmbeddings) -> Any:
    from llama_index.core.base.embeddings.base import BaseEmbedding

    class LIDict(BaseEmbedding):
        def _get_query_embedding(self, query: str) -> list[float]:
            return e.embed_query(query)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return e.embed_query(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return e.embed_documents([text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return e.embed_documents(texts)

    return LIDict(model_name="dict-lookup", embed_batch_size=1000)


# -- FAISS index kind: the same as ours at each size ------------------------------------------------


def ivf_like_ours(vectors: np.ndarray, metric: Any = None) -> Any:
    """An untrained-then-trained IVF with exactly ``DenseShard._build``'s parameters."""
    import faiss

    n, dim = vectors.shape
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    metric = faiss.METRIC_INNER_PRODUCT if metric is None else metric
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim) if metric == faiss.METRIC_INNER_PRODUCT
                               else faiss.IndexFlatL2(dim), dim, nlist, metric)
    sample = vectors
    if len(sample) > 64 * nlist:
        sample = sample[np.random.default_rng(0).choice(len(sample), 64 * nlist, replace=False)]
    index.train(np.ascontiguousarray(sample))
    index.nprobe = min(32, nlist)
    return index


def floor_index(vectors: np.ndarray) -> tuple[Any, str]:
    import faiss

    if len(vectors) > IVF_THRESHOLD:
        index = ivf_like_ours(vectors)
        kind = f"IVFFlat nlist {index.nlist} nprobe {index.nprobe}"
    else:
        index, kind = faiss.IndexFlatIP(vectors.shape[1]), "FlatIP"
    index.add(vectors)
    return index, kind


# -- the stacks ------------------------------------------------------------------------------------

Query = Callable[[str], list[str]]


def build_raw(data: Data, emb: DictEmbeddings) -> tuple[Query, dict[str, Any]]:
    import bm25s

    ids = data.ids
    bm = bm25s.BM25()  # lucene, k1 1.5, b 0.75
    bm.index([_WORD.findall(t.lower()) for t in data.texts], show_progress=False)
    index, kind = floor_index(data.doc_vectors)  # both data sets are L2-normalised float32 already
    vocab = bm.vocab_dict

    def query(q: str) -> list[str]:
        tokens = [vocab[t] for t in _WORD.findall(q.lower()) if t in vocab]
        fused: dict[str, float] = {}
        if tokens:
            scores = bm.get_scores(tokens)
            nz = np.flatnonzero(scores)
            if len(nz) > K:
                nz = nz[np.argpartition(-scores[nz], K - 1)[:K]]
            for rank, r in enumerate(nz[np.argsort(-scores[nz], kind="stable")].tolist(), 1):
                fused[ids[r]] = fused.get(ids[r], 0.0) + 0.5 / (rank + 60)
        v = np.asarray(emb.embed_query(q), dtype=np.float32).reshape(1, -1)
        _, rows = index.search(v, K)
        for rank, r in enumerate(rows[0].tolist(), 1):
            if r >= 0:
                fused[ids[r]] = fused.get(ids[r], 0.0) + 0.5 / (rank + 60)
        return sorted(fused, key=fused.__getitem__, reverse=True)[:K]

    return query, {"faiss": kind}


def _signed_batches(data: Data) -> tuple[Any, list[tuple[list[int], Any]]]:
    import guarded_retriever as gr

    signer = gr.ManifestSigner.generate()
    batches = []
    for s in range(0, len(data.ids), BATCH):
        rows = list(range(s, min(s + BATCH, len(data.ids))))
        manifest = signer.sign_texts([data.texts[i] for i in rows], source_type="web",
                                     source_url="https://bench.example.org/crawl", hsts=True)
        batches.append((rows, manifest))
    return signer, batches


def _policy(signer: Any) -> Any:
    import guarded_retriever as gr

    return gr.TrustPolicy(trusted_signers={signer.public_key}, allowed_domains={"example.org"})


def build_core(data: Data, emb: DictEmbeddings, signed: Any = None) -> Any:
    """A ``GuardedIndex`` with the whole corpus in one namespace, ingested in signed batches."""
    import guarded_retriever as gr

    signer, batches = signed if signed is not None else _signed_batches(data)
    index = gr.GuardedIndex(langchain_embeddings(emb), policy=_policy(signer))
    for rows, manifest in batches:
        index.add([(data.ids[i], data.texts[i]) for i in rows], namespace=NS, manifest=manifest)
    return index


def build_ours_langchain(data: Data, emb: DictEmbeddings, signed: Any = None) -> tuple[Query, dict[str, Any]]:
    from guarded_retriever.langchain import GuardedRetriever

    core = build_core(data, emb, signed)
    retriever = GuardedRetriever(index=core, namespace=NS, k=K)

    def query(q: str) -> list[str]:
        return [d.id for d in retriever.invoke(q)]  # type: ignore[misc]

    return query, {"core": core, "retriever": retriever}


def build_ours_llamaindex(data: Data, emb: DictEmbeddings, signed: Any = None) -> tuple[Query, dict[str, Any]]:
    from llama_index.core.schema import TextNode

    import guarded_retriever as gr
    from guarded_retriever.llamaindex import GuardedRetriever

    signer, batches = signed if signed is not None else _signed_batches(data)
    embed = llamaindex_embedding(emb)
    core = gr.GuardedIndex(embed, policy=_policy(signer))
    retriever = GuardedRetriever(namespace=NS, embed_model=embed, index=core, similarity_top_k=K)
    for rows, manifest in batches:
        retriever.add_nodes([TextNode(id_=data.ids[i], text=data.texts[i]) for i in rows], manifest=manifest)

    def query(q: str) -> list[str]:
        return [n.node.node_id for n in retriever.retrieve(q)]

    return query, {"core": core, "retriever": retriever}


def _lc_faiss(data: Data, lc_emb: Any, ivf: bool) -> Any:
    from langchain_community.vectorstores import FAISS

    if not ivf:
        return FAISS.from_texts(data.texts, lc_emb, ids=data.ids)  # IndexFlatL2, the default
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores.utils import DistanceStrategy

    store = FAISS(embedding_function=lc_emb, index=ivf_like_ours(data.doc_vectors), docstore=InMemoryDocstore(),
                  index_to_docstore_id={}, distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT)
    store.add_texts(data.texts, ids=data.ids)
    return store


def build_langchain(data: Data, emb: DictEmbeddings, ivf: bool = False,
                    bm25: Any = None) -> tuple[Query, dict[str, Any]]:
    from langchain_classic.retrievers import EnsembleRetriever
    from langchain_community.retrievers import BM25Retriever

    lc_emb = langchain_embeddings(emb)
    if bm25 is None:
        bm25 = BM25Retriever.from_texts(data.texts, ids=data.ids, k=K)
    store = _lc_faiss(data, lc_emb, ivf)
    ensemble = EnsembleRetriever(retrievers=[bm25, store.as_retriever(search_kwargs={"k": K})], weights=[0.5, 0.5])

    def query(q: str) -> list[str]:
        return [d.id or "" for d in ensemble.invoke(q)][:K]

    return query, {"bm25": bm25}


def build_llamaindex(data: Data, emb: DictEmbeddings, ivf: bool = False,
                     bm25: Any = None) -> tuple[Query, dict[str, Any]]:
    import faiss
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.retrievers import QueryFusionRetriever
    from llama_index.core.schema import TextNode
    from llama_index.retrievers.bm25 import BM25Retriever
    from llama_index.vector_stores.faiss import FaissVectorStore

    nodes = [TextNode(id_=i, text=t) for i, t in zip(data.ids, data.texts, strict=True)]
    if bm25 is None:
        bm25 = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=K)  # bm25s, stemmer, en stop-words
    faiss_index = ivf_like_ours(data.doc_vectors) if ivf else faiss.IndexFlatIP(data.dim)
    store = FaissVectorStore(faiss_index=faiss_index)
    index = VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store),
                             embed_model=llamaindex_embedding(emb))
    fusion = QueryFusionRetriever([index.as_retriever(similarity_top_k=K), bm25], similarity_top_k=K,
                                  num_queries=1, mode="reciprocal_rerank", use_async=False, llm=MockLLM())

    def query(q: str) -> list[str]:
        return [n.node.node_id for n in fusion.retrieve(q)]

    return query, {"bm25": bm25}


def build_tax_langchain() -> tuple[Query, dict[str, Any]]:
    from langchain_core.retrievers import BaseRetriever

    class Nothing(BaseRetriever):
        def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Any]:
            return []

    retriever = Nothing()
    return lambda q: [d.id for d in retriever.invoke(q)], {}


def build_tax_llamaindex(emb: DictEmbeddings) -> tuple[Query, dict[str, Any]]:
    from llama_index.core.base.base_retriever import BaseRetriever

    embed = llamaindex_embedding(emb)

    class EmbedOnly(BaseRetriever):
        def _retrieve(self, query_bundle: Any) -> list[Any]:
            embed.get_query_embedding(query_bundle.query_str)
            return []

    retriever = EmbedOnly()
    return lambda q: [n.node.node_id for n in retriever.retrieve(q)], {}


TAX = ("tax/langchain", "tax/llamaindex")


def stack_names(size: int) -> list[str]:
    names = ["raw", "ours/langchain", "ours/llamaindex", "langchain", "llamaindex"]
    if size > IVF_THRESHOLD:
        names += ["langchain (IVF)", "llamaindex (IVF)"]
    return names


def build(name: str, data: Data, emb: DictEmbeddings, shared: dict[str, Any]) -> tuple[Query, dict[str, Any]]:
    if name == "raw":
        return build_raw(data, emb)
    if name == "ours/langchain":
        return build_ours_langchain(data, emb, shared.get("signed"))
    if name == "ours/llamaindex":
        return build_ours_llamaindex(data, emb, shared.get("signed"))
    if name.startswith("langchain"):
        return build_langchain(data, emb, ivf="IVF" in name, bm25=shared.get("lc_bm25"))
    if name.startswith("llamaindex"):
        return build_llamaindex(data, emb, ivf="IVF" in name, bm25=shared.get("li_bm25"))
    if name == "tax/langchain":
        return build_tax_langchain()
    if name == "tax/llamaindex":
        return build_tax_llamaindex(emb)
    raise SystemExit(f"unknown stack {name!r}")


# -- measurement -----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _peak_rss_mib() -> float:
    """This process image's peak RSS: ``VmHWM``. (``ru_maxrss`` survives ``exec``: a child forked
    from a big parent would report the parent's size.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_child(name: str, path: Path) -> dict[str, float]:
    """Build and query one stack in this (fresh) process; report its peak RSS."""
    import psutil

    data = Data(path)
    emb = DictEmbeddings(data)
    signed = _signed_batches(data) if name.startswith("ours") else None
    gc.collect()
    baseline = psutil.Process().memory_info().rss / 2**20
    fn, _ = build(name, data, emb, {"signed": signed})
    for q in data.queries:
        fn(q)
    peak = _peak_rss_mib()
    return {"peak_mib": peak, "baseline_mib": baseline, "rss_end_mib": psutil.Process().memory_info().rss / 2**20}


class StepTimer:
    """Self time per named step (nested steps are subtracted from their parent)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._stack: list[float] = []  # child time accumulated per open frame

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        totals, stack, clock = self.totals, self._stack, time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            stack.append(0.0)
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                took = clock() - t0
                children = stack.pop()
                totals[name] = totals.get(name, 0.0) + took - children
                if stack:
                    stack[-1] += took

        return timed


def guard_breakdown(core: Any, queries: list[str], rounds: int) -> dict[str, float]:
    """µs per query per step of ``GuardedIndex.search``, with wrappers installed here, then removed."""
    import guarded_retriever._index as ix
    from guarded_retriever import _bm25, _dense, _namespace, _store

    timer = StepTimer()
    patches: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, attr: str, step: str) -> None:
        original = getattr(owner, attr)
        patches.append((owner, attr, original))
        setattr(owner, attr, timer.wrap(step, original))

    patch(ix.GuardedIndex, "search", "glue: loops, namespace exit assert, hits list")
    patch(_namespace.NamespaceSchema, "parse", "namespace parse (fail closed)")
    patch(ix, "canonicalize", "query canonicalise + tokenise")
    patch(ix, "tokenize", "query canonicalise + tokenise")
    patch(ix.GuardedIndex, "_query_vector", "query vector (embedder look-up + check)")
    patch(ix, "_candidates", "candidate union (both lists, exact scores)")
    patch(_store.Shard, "refresh", "shard refresh check")
    patch(_bm25.BM25Shard, "top_with", "BM25 scores + top-k (+ dense candidates' BM25)")
    patch(_bm25.BM25Shard, "scores", "BM25 scores + top-k (+ dense candidates' BM25)")
    patch(_bm25, "top_k", "BM25 scores + top-k (+ dense candidates' BM25)")
    patch(_dense.DenseShard, "search", "dense FAISS search")
    patch(_dense.DenseShard, "similarity", "cross-scores (exact cosines)")
    patch(ix.GuardedIndex, "_fuse", "fusion (linear, priors)")
    patch(ix.GuardedIndex, "_guard", "query guard (echo, paraphrase cluster, re-score)")
    patch(ix.GuardedIndex, "_hit", "hits")
    patch(ix.GuardedIndex, "_withheld", "quarantine look-up (withheld at ingest)")
    patch(ix, "delta_s", "ΔS / λ_state")
    patch(ix, "lambda_state", "ΔS / λ_state")
    patch(ix.GuardedIndex, "_observe_query", "events / logging")
    contract_t = 0.0
    total = 0.0
    n = 0
    try:
        for _ in range(rounds):
            for q in queries:
                t0 = time.perf_counter()
                result = core.search(q, namespace=NS, k=K)
                t1 = time.perf_counter()
                result.contract_json(validate=False)
                contract_t += time.perf_counter() - t1
                total += t1 - t0
                n += 1
    finally:
        for owner, attr, original in reversed(patches):
            setattr(owner, attr, original)
    out = {k: v / n * 1e6 for k, v in sorted(timer.totals.items(), key=lambda kv: -kv[1])}
    out["TOTAL search (with wrappers)"] = total / n * 1e6
    out["contract JSON (opt-in, as_contract)"] = contract_t / n * 1e6
    return out


def run_size(size: int, args: argparse.Namespace) -> dict[str, Any]:
    n_queries = args.queries if args.queries else (130 if size <= 20_000 else 100)
    rounds = args.rounds if args.rounds else (3 if size <= 20_000 else 2)
    path = prepare_data(size, n_queries, args.bundle, args.cache)
    data = Data(path)
    emb = DictEmbeddings(data)
    names = [n for n in stack_names(size) if args.peers is None or n not in PEERS or n in args.peers]
    print(f"\n== {len(data.ids)} documents, {len(data.queries)} queries x {rounds} rounds ==", flush=True)

    shared: dict[str, Any] = {"signed": _signed_batches(data)}
    fns: dict[str, Query] = {}
    builds: dict[str, float] = {}
    extras: dict[str, dict[str, Any]] = {}
    for name in names:
        gc.collect()
        t0 = time.perf_counter()
        fn, extra = build(name, data, emb, shared)
        fn(data.queries[0])  # lazy builds (BM25 CSR, FAISS train/add) count as build time
        builds[name] = time.perf_counter() - t0
        fns[name], extras[name] = fn, extra
        if "bm25" in extra:  # the IVF peer rows share the default rows' BM25 side
            shared["lc_bm25" if name.startswith("langchain") else "li_bm25"] = extra["bm25"]
        print(f"  built {name:<18} {builds[name]:7.2f} s", flush=True)
    if args.idle_peers:  # built and kept alive, never called again: their memory, not their queries
        names = [n for n in names if n not in PEERS]
    # The core gets its own index, as every stack has its own data: sharing the LangChain face's
    # would hand each of the two the other's freshly cached arrays (run 12 and before shared it).
    gc.collect()
    t0 = time.perf_counter()
    core = build_core(data, emb, shared["signed"])
    core.search(data.queries[0], namespace=NS, k=K)
    builds["ours/core"] = time.perf_counter() - t0
    fns["ours/core"] = lambda q: [h.id for h in core.search(q, namespace=NS, k=K).kept]
    names.append("ours/core")
    print(f"  built {'ours/core':<18} {builds['ours/core']:7.2f} s", flush=True)

    # Agreement of the top-10 with the raw floor (a sanity check that everyone searches the same).
    overlap = {n: statistics.mean(len(set(fns[n](q)) & set(fns["raw"](q))) / K for q in data.queries[:30])
               for n in names}
    for name in TAX:
        fns[name], extras[name] = build(name, data, emb, shared)
        names.append(name)

    for name in names:  # warm-up
        for q in data.queries[:10]:
            fns[name](q)
    gc.collect()
    gc.freeze()  # the peers' 100k-object docstores would otherwise be rescanned during timings
    times: dict[str, list[float]] = {n: [] for n in names}  # first call, after another stack
    repeat: dict[str, list[float]] = {n: [] for n in names}  # the same query again, right after
    after_peer: dict[str, list[bool]] = {n: [] for n in names}  # was the stack before it a peer?
    previous = ""
    clock = time.perf_counter
    # A fresh seeded random order per query: a cyclic rotation would always run each stack right
    # after the same neighbour, whose cache and allocator footprint then biases it (up to ~0.4 ms).
    order_rng = np.random.default_rng(20261201)
    for _ in range(rounds):
        for q in data.queries:
            for j in order_rng.permutation(len(names)).tolist():
                name = names[j]
                fn = fns[name]
                t0 = clock()
                fn(q)
                t1 = clock()
                fn(q)
                t2 = clock()
                times[name].append((t1 - t0) * 1e3)
                repeat[name].append((t2 - t1) * 1e3)
                after_peer[name].append(previous in PEERS)
                previous = name
    gc.unfreeze()
    face_overhead = {
        f"{face}{suffix}": statistics.median(a - b for a, b in zip(ts[face], ts["ours/core"], strict=True))
        for face in ("ours/langchain", "ours/llamaindex")
        for suffix, ts in (("", times), (" repeated", repeat))
    }
    breakdown = guard_breakdown(core, data.queries, 1)

    rss: dict[str, dict[str, float]] = {}
    if not args.skip_rss:
        for name in [n for n in names if n != "ours/core" and not n.startswith("tax/")]:
            proc = subprocess.run([sys.executable, __file__, "--rss-only", name, "--data", str(path)],
                                  capture_output=True, text=True, check=False, timeout=1800)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                continue
            rss[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  rss {name:<18} {rss[name]['peak_mib']:8.0f} MiB", flush=True)

    stacks = {}
    for name in names:
        stacks[name] = {
            "p50_ms": statistics.median(times[name]), "p95_ms": pct(times[name], 95),
            "repeated_p50_ms": statistics.median(repeat[name]), "repeated_p95_ms": pct(repeat[name], 95),
            # The first call split by what ran just before: a peer (whose large working set evicts
            # everything of ours from the caches) or one of the light stacks.
            "p50_after_peer_ms": _median_where(times[name], after_peer[name], True),
            "p50_after_light_ms": _median_where(times[name], after_peer[name], False),
            "build_s": builds.get(name),
            "peak_rss_mib": rss.get(name, {}).get("peak_mib"),
            "rss_baseline_mib": rss.get(name, {}).get("baseline_mib"),
            "top10_overlap_with_raw": overlap.get(name),
        }
    return {"size": len(data.ids), "queries": len(data.queries), "rounds": rounds,
            "faiss_floor": extras["raw"]["faiss"], "stacks": stacks,
            "face_overhead_p50_ms": face_overhead, "guard_steps_us": breakdown}


def _median_where(values: list[float], flags: list[bool], flag: bool) -> float | None:
    chosen = [v for v, f in zip(values, flags, strict=True) if f is flag]
    return statistics.median(chosen) if chosen else None


def save_load(size: int, args: argparse.Namespace) -> dict[str, float]:
    """Save a signed index of ``size`` documents in one fresh process and load it in another."""
    path = prepare_data(size, args.queries or 100, args.bundle, args.cache)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "index"
        runs = []
        for mode in ("--save-index", "--load-index"):
            proc = subprocess.run([sys.executable, __file__, mode, str(out), "--data", str(path)],
                                  capture_output=True, text=True, check=True, timeout=1800)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        return {**runs[0], **runs[1]}


def save_child(out: Path, path: Path) -> dict[str, float]:
    data = Data(path)
    emb = DictEmbeddings(data)
    signer, batches = _signed_batches(data)
    core = build_core(data, emb, (signer, batches))
    core.search(data.queries[0], namespace=NS, k=K)
    t0 = time.perf_counter()
    core.save(out, signer=signer)
    took = time.perf_counter() - t0
    (out.parent / "key").write_text(signer.public_key)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"save_s": took, "saved_mib": size / 2**20}


def load_child(out: Path, path: Path) -> dict[str, float]:
    import guarded_retriever as gr

    data = Data(path)
    emb = langchain_embeddings(DictEmbeddings(data))
    key = (out.parent / "key").read_text()
    t0 = time.perf_counter()
    index = gr.GuardedIndex.load(out, trusted_signers={key}, embedder=emb)
    loaded = time.perf_counter() - t0
    first = time.perf_counter()
    index.search(data.queries[0], namespace=NS, k=K)
    first_q = time.perf_counter() - first
    t = []
    for q in data.queries[1:21]:
        s = time.perf_counter()
        index.search(q, namespace=NS, k=K)
        t.append(time.perf_counter() - s)
    return {"load_s": loaded, "first_query_ms": first_q * 1e3, "next_queries_p50_ms": statistics.median(t) * 1e3}


def ingest_rate(bundle: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(HERE / "ingest_throughput.py"), "--bundle", str(bundle)],
                          capture_output=True, text=True, check=True, timeout=1800)
    m = re.search(r"guard pass \+ ledger \(commit\):\s+([\d,]+) docs/s", proc.stdout)
    p = re.search(r"guard pass \(prepare\):\s+([\d,]+) docs/s", proc.stdout)
    return {"docs_per_s": float(m.group(1).replace(",", "")) if m else None,
            "prepare_docs_per_s": float(p.group(1).replace(",", "")) if p else None, "output": proc.stdout}


# -- report ----------------------------------------------------------------------------------------

PEERS = ("langchain", "llamaindex", "langchain (IVF)", "llamaindex (IVF)")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f} ms"


def markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    faces = ("ours/langchain", "ours/llamaindex")
    for res in report["sizes"]:
        st = res["stacks"]
        raw = st["raw"]
        lines += [f"\n### {res['size']:,} documents ({res['queries']} queries x {res['rounds']} rounds, "
                  f"k = {K}; floor FAISS: {res['faiss_floor']})\n",
                  "| stack | p50 ms | p95 ms | p50 ms, repeated | p95 ms, repeated | build s | peak RSS MiB "
                  "| ×raw p50 | ×raw p50, repeated | ×raw RSS | top-10 ∩ raw |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, s in st.items():
            rss = s["peak_rss_mib"]
            rr = f"{rss / raw['peak_rss_mib']:.2f}" if rss and raw["peak_rss_mib"] else "–"
            build = "–" if name in TAX else f"{s['build_s']:.2f}"
            overlap = "–" if name in TAX else f"{s['top10_overlap_with_raw']:.2f}"
            lines.append(f"| {name} | {s['p50_ms']:.3f} | {s['p95_ms']:.3f} | {s['repeated_p50_ms']:.3f} | "
                         f"{s['repeated_p95_ms']:.3f} | {build} | {f'{rss:,.0f}' if rss else '–'} | "
                         f"{s['p50_ms'] / raw['p50_ms']:.2f} | {s['repeated_p50_ms'] / raw['repeated_p50_ms']:.2f} | "
                         f"{rr} | {overlap} |")
        peers = [p for p in PEERS if p in st]
        lines += ["", "| ours is faster than … (p50 ratio; repeated in brackets) | " + " | ".join(peers) + " |",
                  "|---|" + "---|" * len(peers)]
        for face in faces:
            ratios = [(st[p]["p50_ms"] / st[face]["p50_ms"], st[p]["repeated_p50_ms"] / st[face]["repeated_p50_ms"])
                      for p in peers]
            lines.append(f"| {face} | " + " | ".join(f"{a:.1f}× ({b:.1f}×)" for a, b in ratios) + " |")
        lines += ["", "| target check | ours/langchain | ours/llamaindex |", "|---|---|---|"]
        for label, key in (("after another stack", "p50_ms"), ("repeated", "repeated_p50_ms")):
            budget = 1.2 * raw[key] + 0.3
            lines.append(f"| p50 ≤ 1.2 × raw + 0.3 ms, {label}: {budget:.3f} ms | "
                         + " | ".join(f"{st[f][key]:.3f} ({'met' if st[f][key] <= budget else 'missed'})"
                                      for f in faces) + " |")
        if raw["peak_rss_mib"]:
            cells = []
            for face in faces:
                rss = st[face]["peak_rss_mib"]
                cells.append(f"{rss / raw['peak_rss_mib']:.2f}×" if rss else "–")
            lines.append(f"| peak RSS ≤ 1.3 × raw ({raw['peak_rss_mib']:,.0f} MiB) | " + " | ".join(cells) + " |")
        fo = res["face_overhead_p50_ms"]
        for suffix, label in (("", "after another stack"), (" repeated", "repeated")):
            lines.append(f"| face overhead over the core (paired p50, {label}) | "
                         + " | ".join(f"{fo[f + suffix]:.3f} ms" for f in faces) + " |")
        lines.append("| first call after a peer; after a light stack (raw, ours, tax), p50 | "
                     + " | ".join(f"{_ms(st[f].get('p50_after_peer_ms'))}; {_ms(st[f].get('p50_after_light_ms'))}"
                                  for f in faces) + " |")
        lines.append(f"| the floor's first call after a peer; after a light stack, p50 | "
                     f"{_ms(raw.get('p50_after_peer_ms'))}; {_ms(raw.get('p50_after_light_ms'))} | |")
        if all(t in st for t in TAX):
            lines.append("| the framework's own per-call cost (tax/…, p50; repeated) | "
                         + " | ".join(f"{st[t]['p50_ms']:.3f} ms; {st[t]['repeated_p50_ms']:.3f} ms"
                                      for t in TAX) + " |")
        lines += ["", f"Guard cost by step inside `GuardedIndex.search` at {res['size']:,} (µs per query, "
                  "self time, timing wrappers on):\n", "| step | µs |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in res["guard_steps_us"].items()]
    if report.get("ingest"):
        ing = report["ingest"]
        lines.append(f"\nIngest without embedding (dev bundle, `ingest_throughput.py`): "
                     f"{ing['docs_per_s']:,.0f} docs/s with the ledger (guard pass alone "
                     f"{ing['prepare_docs_per_s']:,.0f} docs/s); target ≥ 8,000.")
    if report.get("save_load"):
        sl = report["save_load"]
        lines.append(f"\nSigned index of {sl['size']:,} documents: save {sl['save_s']:.2f} s "
                     f"({sl['saved_mib']:.0f} MiB), load {sl['load_s']:.2f} s in a fresh process (target ≤ 1 s), "
                     f"first query {sl['first_query_ms']:.1f} ms, then p50 {sl['next_queries_p50_ms']:.2f} ms.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    ap.add_argument("--queries", type=int, default=0, help="default: 130 at 10k (all), 100 at 100k")
    ap.add_argument("--rounds", type=int, default=0, help="default: 3 at 10k, 2 at 100k")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "gr_peers_cache")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "peers.json")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-extras", action="store_true", help="no ingest rate, no save/load")
    ap.add_argument("--idle-peers", action="store_true",
                    help="build the peers but leave them out of the timing loop")
    ap.add_argument("--peers", nargs="*", choices=PEERS, metavar="PEER",
                    help="build and time only these peers (none if no name follows); ours, the floor and "
                         "the tax rows always run. Shows what the peers' presence costs the others")
    ap.add_argument("--rss-only", metavar="STACK", help=argparse.SUPPRESS)
    ap.add_argument("--save-index", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--load-index", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    if args.rss_only:
        print(json.dumps(rss_child(args.rss_only, args.data)))
        return
    if args.save_index:
        print(json.dumps(save_child(args.save_index, args.data)))
        return
    if args.load_index:
        print(json.dumps(load_child(args.load_index, args.data)))
        return

    report: dict[str, Any] = {"k": K, "sizes": []}
    for size in args.sizes:
        report["sizes"].append(run_size(size, args))
    if not args.skip_extras:
        report["ingest"] = ingest_rate(args.bundle)
        big = max(args.sizes)
        report["save_load"] = {"size": big, **save_load(big, args)}
    text = markdown(report)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
