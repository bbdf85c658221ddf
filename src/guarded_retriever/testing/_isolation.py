"""The tenant-isolation property harness (see :mod:`guarded_retriever.testing`)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._embed import HashingEmbedder
from .._exceptions import GuardedRetrieverError, NamespaceError
from .._index import GuardedIndex
from .._ingest import GuardDocument
from .._namespace import DEFAULT_NAMESPACE_KEYS, Namespace

Triple = tuple[str, str, Mapping[str, Any]]
"""``(id, text, metadata)`` of one returned document, as the caller sees it."""
Outcome = tuple[Sequence[Triple], Sequence[Triple] | None]
"""What a searcher returns: the kept documents, and the quarantined ones when the face reports them."""
Searcher = Callable[["IsolationQuery"], Outcome]

_KEYS = DEFAULT_NAMESPACE_KEYS
_BASES = ("acme", "globex", "initech", "umbrella", "hooli", "wonka", "stark", "wayne", "tyrell", "cyberdyne")
_SYLLABLES = ("ka", "lo", "mi", "ren", "to", "su", "vex", "dar", "qui", "no", "pel", "zor", "an", "bri", "ost")
_WORDS = ("password", "reset", "invoice", "billing", "api", "token", "rotation", "vpn", "payroll", "ledger",
          "settings", "security", "export", "quota", "refund", "contract", "tenant", "account", "admin", "key")
# Look-alikes of Latin letters (Cyrillic, Greek, full-width, Latin small capital): a namespace with
# one of them must be refused, never matched or folded onto the Latin tenant.
_HOMOGLYPHS = {"a": ("\u0430", "\uff41"), "e": ("\u0435", "\u212e"), "o": ("\u043e", "\u03bf"),
               "c": ("\u0441", "\u217d"), "i": ("\u0456", "\u026a"), "n": ("\u0578",), "m": ("\u217f",)}


def namespace_key(ns: Mapping[str, str], keys: Sequence[str] = _KEYS) -> str:
    """The ground-truth key of a namespace mapping (the same form the package documents)."""
    return "|".join(f"{k}={ns[k]}" for k in keys)


@dataclass(frozen=True, slots=True)
class WorldDoc:
    """One document as its writer wrote it: the ground truth a hit is checked against."""

    namespace: str
    id: str
    text: str
    metadata: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class IsolationWorld:
    """A seeded multi-tenant corpus: namespaces, their documents, and the batches that wrote them."""

    namespaces: tuple[dict[str, str], ...]
    docs: dict[str, dict[str, WorldDoc]]
    """Ground truth: namespace key → doc id → what that namespace wrote under the id."""
    batches: tuple[tuple[dict[str, str], tuple[WorldDoc, ...]], ...]
    vocabulary: tuple[str, ...]

    def size(self, key: str) -> int:
        return len(self.docs.get(key, {}))

    @property
    def total(self) -> int:
        return sum(len(d) for d in self.docs.values())


@dataclass(frozen=True, slots=True)
class IsolationQuery:
    """One request: what is passed as the namespace, and what the request must resolve to.

    ``expect`` is the ground-truth key of the namespace the request names, or ``None`` when the
    namespace is malformed and the request must fail with :class:`NamespaceError`.
    """

    text: str
    namespace: Any
    expect: str | None
    k: int
    kind: str


def _namespaces(rng: random.Random, tenants: int) -> list[dict[str, str]]:
    """Namespaces that differ by one character, by case only, or in one key only."""
    out: list[dict[str, str]] = []
    for base in _BASES:
        out.append({"tenant_id": base, "product_id": "kb", "env": "prod"})
        out.append({"tenant_id": base.capitalize(), "product_id": "kb", "env": "prod"})
        out.append({"tenant_id": base.upper(), "product_id": "kb", "env": "prod"})
        out.append({"tenant_id": base, "product_id": "kb", "env": "staging"})
        out.append({"tenant_id": base, "product_id": "KB", "env": "prod"})
        out.append({"tenant_id": f"{base}-1", "product_id": "kb", "env": "prod"})
        out.append({"tenant_id": f"{base}.eu", "product_id": "docs", "env": "prod"})
        out.append({"tenant_id": f"{base}_", "product_id": "kb", "env": "prod"})
        out.append({"tenant_id": f"{base}@x", "product_id": "kb", "env": "prod:1"})
    head = out[:9]  # always the full set of confusables of the first tenant
    rest = out[9:]
    rng.shuffle(rest)
    return head + rest[: max(0, tenants - len(head))]


def make_world(seed: int = 0, *, tenants: int = 24, max_docs: int = 40, id_pool: int = 60) -> IsolationWorld:
    """A corpus where every tenant draws from one vocabulary and one id pool.

    Texts overlap across tenants (shared words, and some verbatim copies of another tenant's text)
    so that a query written for one tenant matches others' documents too; ids collide across
    tenants (``doc-7`` exists in many), and some look like namespace keys. About a third of the
    documents carry another tenant's namespace keys in their user metadata.
    """
    rng = random.Random(seed)
    namespaces = _namespaces(rng, tenants)
    vocabulary = tuple(dict.fromkeys(
        [*_WORDS, *("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))) for _ in range(220))]))
    docs: dict[str, dict[str, WorldDoc]] = {}
    batches: list[tuple[dict[str, str], tuple[WorldDoc, ...]]] = []
    written: list[WorldDoc] = []
    serial = 0
    for ns in namespaces:
        key = namespace_key(ns)
        mine: dict[str, WorldDoc] = {}
        n_docs = rng.randint(1, max_docs)
        ids = rng.sample(range(id_pool), min(n_docs, id_pool))
        for j in ids:
            serial += 1
            doc_id = f"doc-{j}"
            if rng.random() < 0.05:
                other = rng.choice(namespaces)
                doc_id = namespace_key(other) if rng.random() < 0.5 else f"{other['tenant_id']}|{j}= d\u00f3c"
            if doc_id in mine:
                doc_id = f"doc-{j}-{serial}"
            if written and rng.random() < 0.12:
                text = rng.choice(written).text  # a verbatim copy of someone else's text
            else:
                words = rng.choices(vocabulary, k=rng.randint(5, 24))
                if rng.random() < 0.3:
                    words.append(f"ref{serial:05d}")  # a token no other document has
                text = " ".join(words).capitalize() + "."
            metadata: dict[str, Any] = {"seq": serial, "title": rng.choice(vocabulary)}
            roll = rng.random()
            other = rng.choice(namespaces)
            if roll < 0.3:
                metadata.update(other)  # another tenant's namespace keys, smuggled into user metadata
            elif roll < 0.4:
                metadata["namespace"] = namespace_key(other)
            elif roll < 0.45:
                metadata["_guarded"] = {"namespace": namespace_key(other), "id": doc_id}  # LangChain's store tag
            elif roll < 0.5:
                metadata["guarded_retriever_id"] = f"doc-{rng.randrange(id_pool)}"  # LlamaIndex's store-copy key
            doc = WorldDoc(key, doc_id, text, metadata)
            mine[doc_id] = doc
            written.append(doc)
        docs[key] = mine
        items = list(mine.values())
        while items:
            size = rng.randint(1, 12)
            batches.append((dict(ns), tuple(items[:size])))
            items = items[size:]
    rng.shuffle(batches)  # tenants' batches interleave
    return IsolationWorld(tuple(namespaces), docs, tuple(batches), vocabulary)


def populate(index: GuardedIndex, world: IsolationWorld) -> None:
    """Ingest every batch of ``world`` into ``index`` (its policy must accept unsigned batches)."""
    for ns, batch in world.batches:
        index.add([GuardDocument(d.id, d.text, d.metadata) for d in batch], namespace=ns)


def _homoglyph(value: str, rng: random.Random) -> str | None:
    spots = [i for i, ch in enumerate(value) if ch.lower() in _HOMOGLYPHS]
    if not spots:
        return None
    i = rng.choice(spots)
    return value[:i] + rng.choice(_HOMOGLYPHS[value[i].lower()]) + value[i + 1:]


def invalid_namespaces(ns: Mapping[str, str], rng: random.Random | None = None) -> list[Any]:
    """Malformed variants of a valid namespace; every one of them must be refused.

    Missing, ``None``, empty, non-string, extra and mis-cased keys; homoglyph, full-width,
    zero-width, padded, over-long and ``|``/``=``-injected values; non-mappings; and malformed
    canonical-key strings.
    """
    rng = rng if rng is not None else random.Random(0)
    key = namespace_key(ns)
    out: list[Any] = [None, {}, [], "", 0, b"tenant_id", [tuple(ns.items())], key.encode(), f"{key}|", f"{key}|env=dev",
                      key.replace("|", ";"), key.replace("=", ":"), f" {key}", key.rsplit("|", 1)[0]]
    for k in ns:
        value = ns[k]
        out.append({x: v for x, v in ns.items() if x != k})
        out.append({**ns, k: None})
        out.append({**ns, k: ""})
        out.append({**ns, k: 7})
        out.append({**ns, k: value.encode()})
        out.append({**ns, k: [value]})
        out.append({**ns, k: f" {value}"})
        out.append({**ns, k: f"{value}\n"})
        out.append({**ns, k: f"{value[:1]}\u200b{value[1:]}"})
        out.append({**ns, k: f"{value}|{k}=x"})
        out.append({**ns, k: f"{value}=1"})
        out.append({**ns, k: value + "x" * 128})
        out.append({**ns, k: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in value)})  # full width
        glyph = _homoglyph(value, rng)
        if glyph is not None:
            out.append({**ns, k: glyph})
        renamed = {(x.upper() if x == k else x): v for x, v in ns.items()}
        out.append(renamed)
    out.append({**ns, "namespace": key})
    out.append({**ns, "tenant": ns.get("tenant_id", "x")})
    return out


def _unknown_namespace(world: IsolationWorld, rng: random.Random) -> dict[str, str]:
    """A well-formed namespace no batch ever wrote to (a near miss of a real one)."""
    while True:
        ns = dict(rng.choice(world.namespaces))
        k = rng.choice(_KEYS)
        ns[k] = rng.choice([ns[k].swapcase(), ns[k] + "0", ns[k][:-1] or "z", "dev", ns[k] + ".", "-" + ns[k]]) \
            if k != "tenant_id" or rng.random() < 0.7 else rng.choice(_BASES) + "2"
        if ns[k] and ns[k][0] != "-" and namespace_key(ns) not in world.docs:
            return ns


def _form(ns: dict[str, str], rng: random.Random) -> Any:
    """A valid namespace in one of the forms the package accepts."""
    roll = rng.random()
    if roll < 0.4:
        return dict(ns)
    if roll < 0.6:
        return dict(reversed(list(ns.items())))
    if roll < 0.8:
        return Namespace.of(**ns)
    items = list(ns.items())
    rng.shuffle(items)
    return "|".join(f"{k}={v}" for k, v in items)


def _query_text(world: IsolationWorld, key: str, rng: random.Random) -> tuple[str, str]:
    others = [k for k in world.docs if k != key]
    foreign = rng.choice(list(world.docs[rng.choice(others)].values()))
    own = list(world.docs.get(key, {}).values())
    roll = rng.random()
    if roll < 0.35:
        words = foreign.text.rstrip(".").split()
        return " ".join(rng.sample(words, min(len(words), rng.randint(2, 6)))), "foreign-words"
    if roll < 0.5:
        return foreign.text, "foreign-echo"
    if roll < 0.65 and own:
        words = rng.choice(own).text.rstrip(".").split()
        return " ".join(rng.sample(words, min(len(words), rng.randint(1, 5)))), "own-words"
    if roll < 0.75:
        return f"{foreign.id} {foreign.metadata.get('title', '')} {foreign.namespace}", "foreign-id"
    if roll < 0.87:
        return " ".join(rng.choices(world.vocabulary, k=rng.randint(1, 8))), "random-words"
    if roll < 0.93:
        return rng.choice(["", "   ", "?", "...", "\u200b", "the"]), "degenerate"
    glyph = _homoglyph(foreign.text, rng) or foreign.text
    return glyph, "homoglyph-text"


def make_queries(world: IsolationWorld, n: int, *, seed: int = 1) -> list[IsolationQuery]:
    """``n`` requests: about 75% for a tenant that exists, 7% for a well-formed namespace nobody
    wrote to, 18% with a malformed namespace; ``k`` from 1 to far above the tenant's size."""
    rng = random.Random(seed)
    bad_pool = {namespace_key(ns): invalid_namespaces(ns, rng) for ns in world.namespaces}
    out = []
    for _ in range(n):
        ns = rng.choice(world.namespaces)
        key = namespace_key(ns)
        text, kind = _query_text(world, key, rng)
        size = world.size(key)
        k = rng.choice([1, 2, 3, 5, 10, size, size + 1, 2 * size + 3, 100, 1000])
        roll = rng.random()
        if roll < 0.75:
            out.append(IsolationQuery(text, _form(ns, rng), key, k, kind))
        elif roll < 0.82:
            unknown = _unknown_namespace(world, rng)
            out.append(IsolationQuery(text, _form(unknown, rng), namespace_key(unknown), k, "unknown-namespace"))
        else:
            out.append(IsolationQuery(text, rng.choice(bad_pool[key]), None, k, "invalid-namespace"))
    return out


@dataclass
class IsolationReport:
    """Counts of one isolation run; ``leaks`` and ``failures`` must both stay empty."""

    face: str
    queries: int = 0
    refused: int = 0
    """Malformed namespaces refused with :class:`NamespaceError`, as they must be."""
    unknown: int = 0
    """Requests for a well-formed namespace nobody wrote to (they must return nothing)."""
    answered: int = 0
    """Requests for a namespace that exists."""
    hits: int = 0
    """Documents returned in all (kept and, where the face reports them, quarantined)."""
    complete: int = 0
    """Requests with ``k`` at or above the tenant's size whose answer held all of the tenant's documents."""
    leaks: list[str] = field(default_factory=list)
    """A returned document another namespace wrote, or a malformed namespace that was answered."""
    failures: list[str] = field(default_factory=list)
    """Anything else that went wrong: an untyped error, a refused valid request, duplicates, gaps."""

    def summary(self) -> str:
        return (f"{self.face}: {self.queries} queries ({self.answered} answered, {self.unknown} unknown namespace, "
                f"{self.refused} refused), {self.hits} hits, {self.complete} complete, "
                f"{len(self.leaks)} leaks, {len(self.failures)} failures")


def _check_doc(world: IsolationWorld, key: str, triple: Triple, strip: frozenset[str]) -> str | None:
    doc_id, text, metadata = triple
    truth = world.docs.get(key, {}).get(doc_id)
    if truth is None:
        owners = sorted(k for k, d in world.docs.items() if doc_id in d)
        return f"id {doc_id!r} returned for {key}, written only by {owners}"
    if text != truth.text:
        owners = sorted(k for k, d in world.docs.items() if any(x.text == text for x in d.values()))
        return f"{doc_id!r} for {key} came back with another text (written by {owners})"
    theirs = {k: v for k, v in metadata.items() if k not in strip}
    mine = {k: v for k, v in truth.metadata.items() if k not in strip}
    if theirs != mine:
        return f"{doc_id!r} for {key} came back with another document's metadata {theirs!r}"
    return None


def run_isolation(
    world: IsolationWorld,
    queries: Iterable[IsolationQuery],
    search: Searcher,
    *,
    face: str = "core",
    strip: Iterable[str] = (),
    complete_up_to: int = 0,
) -> IsolationReport:
    """Run every query through ``search`` and check the answers against the world's ground truth.

    Args:
        strip: metadata keys the face adds to every document (its scores), left out of the check.
        complete_up_to: for tenants of at most this many documents, a request with ``k`` at or
            above the tenant's size must return every document the tenant wrote (kept and
            quarantined together; only for faces that report quarantined documents). It keeps a
            fence that answers nothing at all from passing as isolation.
    """
    report = IsolationReport(face)
    dropped = frozenset(strip)
    for q in queries:
        report.queries += 1
        try:
            kept, quarantined = search(q)
        except NamespaceError as exc:
            if q.expect is None:
                report.refused += 1
            else:
                report.failures.append(f"valid namespace {q.namespace!r} refused: {exc}")
            continue
        except GuardedRetrieverError as exc:
            report.failures.append(f"{q.kind} {q.namespace!r} k={q.k}: {type(exc).__name__}: {exc}")
            continue
        if q.expect is None:
            report.leaks.append(f"malformed namespace {q.namespace!r} was answered ({len(kept)} hits)")
            continue
        returned = [*kept, *(quarantined or ())]
        report.hits += len(returned)
        if world.size(q.expect):
            report.answered += 1
        else:
            report.unknown += 1
        for triple in returned:
            leak = _check_doc(world, q.expect, triple, dropped)
            if leak is not None:
                report.leaks.append(f"{q.kind} k={q.k}: {leak}")
        ids = [t[0] for t in returned]
        if len(ids) != len(set(ids)):
            report.failures.append(f"duplicate ids for {q.expect}: {ids}")
        if len(kept) > q.k:
            report.failures.append(f"{len(kept)} hits for k={q.k}")
        size = world.size(q.expect)
        if quarantined is not None and 0 < size <= complete_up_to and q.k >= size:
            if set(ids) == set(world.docs[q.expect]):
                report.complete += 1
            else:
                report.failures.append(f"k={q.k} >= size {size} of {q.expect}, got {len(set(ids))} documents")
    return report


def core_searcher(index: GuardedIndex) -> Searcher:
    """``GuardedIndex.search``: kept and quarantined hits."""

    def search(q: IsolationQuery) -> Outcome:
        result = index.search(q.text, namespace=q.namespace, k=q.k)
        return ([(h.id, h.text, h.metadata) for h in result.kept],
                [(h.id, h.text, h.metadata) for h in result.quarantined])

    return search


def langchain_searcher(world: IsolationWorld, *, base_store: bool, dim: int = 64) -> tuple[Searcher, Any]:
    """The LangChain face over a fresh index holding ``world``: an unbound ``GuardedRetriever``
    invoked with ``namespace=`` per request, and (one in four requests) a retriever bound with
    ``for_namespace``. With ``base_store`` the dense side is an ``InMemoryVectorStore`` that every
    tenant's copies share. Returns the searcher and the ``GuardedVectorStore``."""
    import numpy as np
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import InMemoryVectorStore

    from .._policy import TrustPolicy
    from ..langchain import GuardedRetriever, GuardedVectorStore

    class _Hashing(Embeddings):
        def __init__(self) -> None:
            self._inner = HashingEmbedder(dim)

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            v = self._inner.embed_documents(texts)
            return (v / np.linalg.norm(v, axis=1, keepdims=True)).tolist()  # type: ignore[no-any-return]

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    from langchain_core.documents import Document

    embeddings = _Hashing()
    open_policy = TrustPolicy(manifest_required=False)
    if base_store:
        store = GuardedVectorStore(InMemoryVectorStore(embeddings), namespace=world.namespaces[0], policy=open_policy)
    else:
        store = GuardedVectorStore(None, namespace=world.namespaces[0], embedding=embeddings, policy=open_policy)
    for ns, batch in world.batches:
        store.for_namespace(ns).add_documents(
            [Document(id=d.id, page_content=d.text, metadata=dict(d.metadata)) for d in batch])
    unbound = GuardedRetriever(index=store.index, vectorstore=store.base)
    counter = [0]

    def search(q: IsolationQuery) -> Outcome:
        counter[0] += 1
        if counter[0] % 4 == 0:
            docs = store.for_namespace(q.namespace).as_guarded_retriever(k=q.k).invoke(q.text)
        else:
            docs = unbound.invoke(q.text, namespace=q.namespace, k=q.k)
        return [(str(d.id), d.page_content, d.metadata) for d in docs], None

    return search, store


def llamaindex_searcher(world: IsolationWorld, *, base_store: bool, dim: int = 64) -> tuple[Searcher, Any]:
    """The LlamaIndex face over a fresh index holding ``world``: ``GuardedRetriever.for_namespace``
    per request, then ``retrieve``. With ``base_store`` the dense side is one ``SimpleVectorStore``
    shared by every tenant. Returns the searcher and the first tenant's retriever."""
    from llama_index.core.schema import MetadataMode, TextNode
    from llama_index.core.vector_stores import SimpleVectorStore

    from .._policy import TrustPolicy
    from ..llamaindex import GuardedRetriever, HashingEmbedding

    embed_model = HashingEmbedding(dim=dim)
    index = GuardedIndex(embed_model, policy=TrustPolicy(manifest_required=False))
    root = GuardedRetriever(namespace=world.namespaces[0], embed_model=embed_model, index=index,
                            vector_store=SimpleVectorStore() if base_store else None)
    for ns, batch in world.batches:
        root.for_namespace(ns).add_nodes(
            [TextNode(id_=d.id, text=d.text, metadata=dict(d.metadata)) for d in batch])

    def search(q: IsolationQuery) -> Outcome:
        nodes = root.for_namespace(q.namespace, similarity_top_k=q.k).retrieve(q.text)
        return [(n.node.node_id, n.node.get_content(metadata_mode=MetadataMode.NONE), n.node.metadata)
                for n in nodes], None

    return search, root


def unfenced_foreign_rate(world: IsolationWorld, queries: Iterable[IsolationQuery], *, dim: int = 64) -> float:
    """The fraction of answerable ``queries`` whose top-``k`` would hold another tenant's document
    if every tenant shared one namespace: the sanity check that the queries really reach across
    tenants, so that the fence has something to stop."""
    from .._policy import TrustPolicy

    pooled = GuardedIndex(HashingEmbedder(dim), policy=TrustPolicy(manifest_required=False))
    one = {"tenant_id": "everyone", "product_id": "kb", "env": "prod"}
    owner: dict[str, str] = {}
    for i, (ns, batch) in enumerate(world.batches):
        key = namespace_key(ns)
        rows = []
        for d in batch:
            pooled_id = f"{i}/{d.id}"
            owner[pooled_id] = key
            rows.append((pooled_id, d.text))
        pooled.add(rows, namespace=one)
    reached = answerable = 0
    for q in queries:
        if q.expect is None or not world.size(q.expect):
            continue
        answerable += 1
        result = pooled.search(q.text, namespace=one, k=q.k)
        if any(owner[h.id] != q.expect for h in [*result.kept, *result.quarantined]):
            reached += 1
    return reached / answerable if answerable else 0.0
