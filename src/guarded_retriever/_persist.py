"""Pickle-free, signed save and load of a whole :class:`GuardedIndex`.

Layout of a saved index (a directory)::

    index.json          format, dimension, config, trust policy, poison model, shard list
    ledger.sqlite       the decision ledger (an SQLite backup, not a file copy: it is consistent)
    s<j>/rows.json      ids, hashes, sources and reasons as columns; alive rows only (tombstones
                        are compacted)
    s<j>/text.bin, metadata.bin (+ *_offsets.npy)
                        texts and metadata as one blob each, decoded per row when a query needs it
    s<j>/provenance.npy, poison.npy, features.npy
                        the ingest verdicts, row-aligned
    s<j>/vectors.npy    float32, row-aligned (memory-mapped on load)
    s<j>/terms.npy, tfs.npy, offsets.npy, vocab.json
                        the BM25 term lists, so loading never re-tokenises
    s<j>/indptr.npy, postings.npy, weights.npy
                        the scored BM25 postings, so loading never re-indexes (when no tombstones)
    s<j>/faiss.index    the trained IVF / HNSW index (``faiss.write_index``) when there is one
    MANIFEST.json       the sha256 of every other file, and the signer's public key
    MANIFEST.sig        ed25519 over a context tag + MANIFEST.json

Loading checks the signature first (the signer must be on the caller's allowlist), then every
file's checksum, and refuses missing or unlisted files, before it parses anything. An unsigned
index loads only with ``allow_unsigned=True``. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nacl.exceptions
import nacl.signing
import numpy as np
import orjson

from ._bm25 import BM25Shard
from ._config import GuardConfig
from ._dense import faiss
from ._exceptions import IntegrityError, SignatureError, UntrustedSignerError
from ._ledger import Ledger
from ._manifest import ManifestSigner
from ._poison import PoisonModel
from ._policy import TrustPolicy
from ._store import Shard

if TYPE_CHECKING:
    from ._index import GuardedIndex

__all__ = ["load_index", "save_index"]

FORMAT = "guarded-retriever/index/v1"
_CONTEXT = b"guarded-retriever/index-manifest/v1\n"
_MANIFEST, _SIGNATURE = "MANIFEST.json", "MANIFEST.sig"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_shard(shard: Shard, out: Path) -> int:
    out.mkdir()
    alive = sorted(shard.positions.values())
    rows = [shard.rows[p] for p in alive]
    # Columns, not records: one JSON parse and a few np.load calls bring a shard back.
    columns = {
        "id": [r.id for r in rows], "content_hash": [r.content_hash for r in rows],
        "source_url": [r.source_url for r in rows], "manifest_id": [r.manifest_id for r in rows],
        "reasons": [list(r.reasons) for r in rows],
    }
    (out / "rows.json").write_bytes(orjson.dumps(columns))
    # Texts and metadata are the bulk: one blob each with byte offsets, decoded per row on access.
    for name, blobs in (("text", [r.text.encode("utf-8") for r in rows]),
                        ("metadata", [orjson.dumps(dict(r.metadata)) for r in rows])):
        (out / f"{name}.bin").write_bytes(b"".join(blobs))
        np.save(out / f"{name}_offsets.npy", np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64))
    np.save(out / "provenance.npy", np.array([r.provenance for r in rows], dtype=np.float64))
    np.save(out / "poison.npy", np.array([r.poison for r in rows], dtype=np.float64))
    width = len(rows[0].features) if rows else 0
    np.save(out / "features.npy", np.array([r.features for r in rows], dtype=np.float64).reshape(len(rows), width))
    np.save(out / "vectors.npy", np.ascontiguousarray(shard.dense.vectors[alive], dtype=np.float32))
    terms, tfs = shard.bm25.term_lists(alive)
    lengths = np.array([len(t) for t in terms], dtype=np.int64)
    np.save(out / "terms.npy", np.concatenate(terms) if terms else np.zeros(0, np.int32))
    np.save(out / "tfs.npy", np.concatenate(tfs) if tfs else np.zeros(0, np.float32))
    np.save(out / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    (out / "vocab.json").write_bytes(orjson.dumps(shard.bm25.vocabulary()))
    if len(alive) == len(shard.rows):  # no tombstones: the row numbers inside both indexes still hold
        indptr, postings, weights = shard.bm25.postings()
        np.save(out / "indptr.npy", indptr)
        np.save(out / "postings.npy", postings)
        np.save(out / "weights.npy", weights)
        trained = shard.dense.trained_index()
        if trained is not None:  # a flat index is rebuilt from the vectors faster than it is read
            faiss.write_index(trained, str(out / "faiss.index"))
    return len(rows)


def save_index(index: GuardedIndex, path: str | Path, *, signer: ManifestSigner | None) -> Path:
    """Write ``index`` to the directory ``path`` (created; it must not exist yet).

    Args:
        signer: signs the checksum manifest. ``None`` writes an unsigned index, which
            :func:`load_index` refuses unless told ``allow_unsigned=True``.
    """
    dest = Path(path)
    if dest.exists():
        raise IntegrityError(f"{dest} exists: save into a new directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the destination, then rename: a crash never leaves a half-written index there.
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with index._write_lock:
            shards = []
            j = 0
            for partition in (index.main, index.quarantine):
                for key, shard in sorted(partition.shards.items()):
                    n = _write_shard(shard, tmp / f"s{j}")
                    shards.append({"partition": partition.name, "namespace": key, "dir": f"s{j}", "rows": n})
                    j += 1
            meta = {
                "format": FORMAT,
                "dim": index.dim,
                "config": index.config.model_dump(mode="json"),
                "policy": index.pipeline.policy.model_dump(mode="json"),
                "model": orjson.loads(index.model.to_json()),
                "shards": shards,
            }
            (tmp / "index.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
            with sqlite3.connect(tmp / "ledger.sqlite") as backup:
                index.ledger.backup_to(backup)
            backup.close()
        files = {p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = orjson.dumps({
            "format": FORMAT,
            "created": time.time(),
            "signer": signer.public_key if signer is not None else None,
            "files": files,
        }, option=orjson.OPT_SORT_KEYS)
        (tmp / _MANIFEST).write_bytes(manifest)
        if signer is not None:
            (tmp / _SIGNATURE).write_text(signer.sign_bytes(_CONTEXT + manifest).hex(), encoding="ascii")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def verify_saved(path: str | Path, *, trusted_signers: Iterable[str] = (), allow_unsigned: bool = False
                 ) -> dict[str, Any]:
    """Check a saved index's signature and checksums without loading it; returns its manifest.

    Raises:
        IntegrityError: unsigned (and not allowed), a file missing, unlisted or changed.
        UntrustedSignerError: signed by a key that is not on ``trusted_signers``.
        SignatureError: the signature does not verify.
    """
    root = Path(path)
    try:
        raw = (root / _MANIFEST).read_bytes()
        manifest = orjson.loads(raw)
        files: dict[str, str] = manifest["files"]
        signer = manifest.get("signer")
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{root}: no readable {_MANIFEST} ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise IntegrityError(f"{root}: unknown format {manifest.get('format')!r}")
    sig_path = root / _SIGNATURE
    if sig_path.exists():
        if not isinstance(signer, str) or signer not in set(trusted_signers):
            raise UntrustedSignerError(f"{root} is signed by {str(signer)[:16]}..., which is not trusted")
        try:
            nacl.signing.VerifyKey(bytes.fromhex(signer)).verify(
                _CONTEXT + raw, bytes.fromhex(sig_path.read_text(encoding="ascii").strip()))
        except (ValueError, nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
            raise SignatureError(f"{root}: the index signature does not verify ({exc})") from None
    elif not allow_unsigned:
        raise IntegrityError(f"{root} is unsigned; pass allow_unsigned=True to load it anyway")
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {_MANIFEST, _SIGNATURE}
    if present != set(files):
        raise IntegrityError(f"{root}: files missing {sorted(set(files) - present)},"
                             f" unlisted {sorted(present - set(files))}")
    for name, digest in files.items():
        if _sha256(root / name) != digest:
            raise IntegrityError(f"{root}: {name} has been modified or truncated")
    return dict(manifest)


def load_index(
    path: str | Path,
    *,
    trusted_signers: Iterable[str] = (),
    allow_unsigned: bool = False,
    embedder: Any = None,
    ledger_path: str | Path | None = None,
) -> GuardedIndex:
    """Verify and load a saved index (see the module docstring for what is checked).

    Args:
        trusted_signers: hex ed25519 keys whose signature is accepted.
        allow_unsigned: load an index saved without a signer (only for trusted storage).
        embedder: for queries without vectors, as in :class:`GuardedIndex`.
        ledger_path: where the loaded ledger lives from now on; in memory when ``None``.
    """
    from ._index import GuardedIndex

    root = Path(path)
    verify_saved(root, trusted_signers=trusted_signers, allow_unsigned=allow_unsigned)
    meta = orjson.loads((root / "index.json").read_bytes())
    ledger = Ledger(ledger_path if ledger_path is not None else ":memory:")
    with sqlite3.connect(root / "ledger.sqlite") as source:
        ledger.restore_from(source)
    source.close()
    index = GuardedIndex(
        embedder,
        dim=meta["dim"],
        config=GuardConfig.model_validate(meta["config"]),
        policy=TrustPolicy.model_validate(meta["policy"]),
        ledger=ledger,
        model=PoisonModel.from_json(orjson.dumps(meta["model"])),
    )
    for entry in meta["shards"]:
        partition = index.main if entry["partition"] == "main" else index.quarantine
        shard = partition.shard(entry["namespace"], meta["dim"])
        _read_shard(shard, root / entry["dir"])
    return index


class _Blob:
    """Row ``i`` of a blob file is ``data[offsets[i]:offsets[i + 1]]``, decoded when asked for."""

    __slots__ = ("_data", "_decode", "_offsets")

    def __init__(self, data: bytes, offsets: np.ndarray, *, decode: Any) -> None:
        self._data, self._offsets, self._decode = data, offsets.tolist(), decode

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> Any:
        return self._decode(self._data[self._offsets[i]: self._offsets[i + 1]])


def _read_shard(shard: Shard, src: Path) -> None:
    columns = orjson.loads((src / "rows.json").read_bytes())
    for name in ("provenance", "poison", "features"):
        columns[name] = np.load(src / f"{name}.npy")
    for name in ("text", "metadata"):
        columns[name] = _Blob((src / f"{name}.bin").read_bytes(), np.load(src / f"{name}_offsets.npy"),
                              decode=(lambda b: b.decode("utf-8")) if name == "text" else orjson.loads)
    vectors = np.load(src / "vectors.npy", mmap_mode="r")
    offsets = np.load(src / "offsets.npy")
    n = len(columns["id"])
    if not (len(vectors) == len(columns["text"]) == len(columns["metadata"]) == len(columns["poison"])
            == len(offsets) - 1 == n):
        raise IntegrityError(f"{src}: rows, vectors and term lists do not line up")
    csr = None
    if (src / "indptr.npy").exists():
        csr = (np.load(src / "indptr.npy"), np.load(src / "postings.npy"), np.load(src / "weights.npy"))
    bm25 = BM25Shard.restore(orjson.loads((src / "vocab.json").read_bytes()), np.load(src / "terms.npy"),
                             np.load(src / "tfs.npy"), offsets, csr, k1=shard.bm25.k1, b=shard.bm25.b)
    trained = faiss.read_index(str(src / "faiss.index")) if (src / "faiss.index").exists() else None
    shard.restore(columns, bm25, vectors, trained)
