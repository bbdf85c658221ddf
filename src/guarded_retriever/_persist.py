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
    s<j>/vectors.npy    float32, row-aligned (a view on the verified bytes after a load)
    s<j>/terms.npy, tfs.npy, offsets.npy, vocab.json
                        the BM25 term lists, so loading never re-tokenises
    s<j>/indptr.npy, postings.npy, weights.npy
                        the scored BM25 postings, so loading never re-indexes (when no tombstones)
    s<j>/faiss.index    the trained IVF / HNSW index (``faiss.write_index``) when there is one
    MANIFEST.json       the sha256 of every other file, and the signer's public key
    MANIFEST.sig        ed25519 over a context tag + MANIFEST.json

Loading checks the signature first (the signer must be on the caller's allowlist), then reads
every file once and checks its checksum, and refuses missing or unlisted files, before it parses
anything; what it parses are the very bytes it checked. An unsigned index loads only with
``allow_unsigned=True``, and a signed one whose signature was removed never does. Nothing is
ever unpickled.
"""

from __future__ import annotations

import hashlib
import io
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
from ._exceptions import GuardedRetrieverError, IntegrityError, SignatureError, UntrustedSignerError
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


def _verified_files(root: Path, trusted_signers: Iterable[str], allow_unsigned: bool
                    ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Check the signature, then read every listed file once and check its sha256.

    The bytes that were hashed are the bytes that get parsed (no second read that a concurrent
    writer could swap), and a name in the manifest can only point inside ``root``.
    """
    try:
        raw = (root / _MANIFEST).read_bytes()
        manifest = orjson.loads(raw)
        files: dict[str, str] = dict(manifest["files"])
        signer = manifest.get("signer")
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
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
    elif signer is not None:
        # Signed once, signature gone: that is tampering, not an unsigned index.
        raise IntegrityError(f"{root}: the manifest names signer {str(signer)[:16]}... but its signature was removed")
    elif not allow_unsigned:
        raise IntegrityError(f"{root} is unsigned; pass allow_unsigned=True to load it anyway")
    base = root.resolve()
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {_MANIFEST, _SIGNATURE}
    if present != set(files):
        raise IntegrityError(f"{root}: files missing {sorted(set(files) - present)},"
                             f" unlisted {sorted(present - set(files))}")
    blobs: dict[str, bytes] = {}
    for name, digest in files.items():
        path = (root / name).resolve()
        if base not in path.parents:
            raise IntegrityError(f"{root}: manifest entry {name!r} points outside the index")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"{root}: {name} has been modified or truncated")
        blobs[name] = data
    return dict(manifest), blobs


def verify_saved(path: str | Path, *, trusted_signers: Iterable[str] = (), allow_unsigned: bool = False
                 ) -> dict[str, Any]:
    """Check a saved index's signature and checksums without loading it; returns its manifest.

    Raises:
        IntegrityError: unsigned (and not allowed), a file missing, unlisted or changed.
        UntrustedSignerError: signed by a key that is not on ``trusted_signers``.
        SignatureError: the signature does not verify, or was removed.
    """
    manifest, _ = _verified_files(Path(path), trusted_signers, allow_unsigned)
    return manifest


def _npy(data: bytes, name: str) -> np.ndarray:
    """An ``.npy`` file's array as a read-only view on already verified bytes (no pickle, no copy)."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        if dtype.hasobject or fortran:
            raise ValueError("object or Fortran-ordered arrays are not accepted")
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(data, dtype=dtype, count=count, offset=buf.tell()).reshape(shape)
    except ValueError as exc:
        raise IntegrityError(f"{name} is not a valid array file ({exc})") from None


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

    Raises:
        IntegrityError, SignatureError, UntrustedSignerError: see :func:`verify_saved`; also an
            ``IntegrityError`` when a verified file does not parse (an unsigned index written by
            hand, say).
    """
    from ._index import GuardedIndex

    root = Path(path)
    _, blobs = _verified_files(root, trusted_signers, allow_unsigned)
    try:
        meta = orjson.loads(blobs["index.json"])
        ledger = Ledger(ledger_path if ledger_path is not None else ":memory:")
        with tempfile.TemporaryDirectory() as tmp:  # sqlite reads files, so the verified bytes go to one
            db = Path(tmp) / "ledger.sqlite"
            db.write_bytes(blobs["ledger.sqlite"])
            with sqlite3.connect(db) as source:
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
            _read_shard(shard, blobs, str(entry["dir"]))
    except GuardedRetrieverError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, sqlite3.Error, RuntimeError, orjson.JSONDecodeError) as exc:
        raise IntegrityError(f"{root}: a verified file does not parse ({type(exc).__name__}: {exc})") from None
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


def _read_shard(shard: Shard, blobs: dict[str, bytes], d: str) -> None:
    def npy(name: str) -> np.ndarray:
        return _npy(blobs[f"{d}/{name}.npy"], f"{d}/{name}.npy")

    columns = orjson.loads(blobs[f"{d}/rows.json"])
    for name in ("provenance", "poison", "features"):
        columns[name] = npy(name)
    for name in ("text", "metadata"):
        columns[name] = _Blob(blobs[f"{d}/{name}.bin"], npy(f"{name}_offsets"),
                              decode=(lambda b: b.decode("utf-8")) if name == "text" else orjson.loads)
    vectors = npy("vectors")
    offsets = npy("offsets")
    n = len(columns["id"])
    if not (len(vectors) == len(columns["text"]) == len(columns["metadata"]) == len(columns["poison"])
            == len(offsets) - 1 == n) or vectors.ndim != 2 or vectors.shape[1] != shard.dense.dim:
        raise IntegrityError(f"{d}: rows, vectors and term lists do not line up")
    csr = (npy("indptr"), npy("postings"), npy("weights")) if f"{d}/indptr.npy" in blobs else None
    bm25 = BM25Shard.restore(orjson.loads(blobs[f"{d}/vocab.json"]), npy("terms"), npy("tfs"), offsets, csr,
                             k1=shard.bm25.k1, b=shard.bm25.b)
    trained = None
    if f"{d}/faiss.index" in blobs:
        trained = faiss.deserialize_index(np.frombuffer(blobs[f"{d}/faiss.index"], dtype=np.uint8))
    shard.restore(columns, bm25, vectors, trained)
