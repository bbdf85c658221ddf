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
    s<j>/ivf.index, ivf_ids.npy, ivf_sizes.npy
                        a trained IVF index (``faiss.write_index``) without its inverted lists,
                        and each list's row ids: the lists are refilled from vectors.npy, so the
                        vectors are not stored (read, hashed) twice
    s<j>/faiss.index    the whole trained HNSW index (``faiss.write_index``), or an IVF one whose
                        lists do not hold exactly the saved vectors; still read from older saves
    MANIFEST.json       the sha256 and the size of every other file, the signer's public key and
                        the index's generation
    MANIFEST.sig        ed25519 over a context tag + MANIFEST.json

Every save writes a generation one above the saved index's own (a new index starts at 0), inside
the signed manifest, so an older, validly signed copy put back over a newer one (a rollback that
would undo revocations and freezes) is told apart: ``load(..., min_generation=N)`` refuses a
generation below ``N``, ``generation=N`` anything but ``N`` (:class:`RollbackError`). Keep the
generation each save returns (``index.generation``) where the storage cannot rewrite it.

Format v2 keys documents by a BLAKE2b content hash; v1 saves (xxh64 identities) are refused with
:class:`IndexFormatError`.

Loading checks the signature first (the signer must be on the caller's allowlist), then reads
every file once and checks its checksum, and refuses missing or unlisted files, before it parses
anything; what it parses are the very bytes it checked. An unsigned index loads only with
``allow_unsigned=True``, and a signed one whose signature was removed never does. Nothing is
ever unpickled.

Memory is spent only on what the signer wrote: ``MANIFEST.json`` is read only up to
``MAX_MANIFEST_BYTES`` (and the signature file up to a few hundred bytes), and every file's size
is checked against its signed size with ``stat`` before a byte of it is read, so a file grown or
swapped for a huge (or sparse) one is refused with :class:`IntegrityError` and costs nothing. Saves
written before sizes were signed carry none: each of their files is first hashed in a stream (no
more memory than a chunk), and read only once it matched. ``verify_saved`` only ever streams.
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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nacl.exceptions
import nacl.signing
import numpy as np
import orjson

from ._bm25 import BM25Shard
from ._config import GuardConfig
from ._dense import faiss
from ._exceptions import (
    ConfigError,
    GuardedRetrieverError,
    IndexFormatError,
    IntegrityError,
    RollbackError,
    SaveError,
    SignatureError,
    UntrustedSignerError,
)
from ._ledger import Ledger
from ._manifest import ManifestSigner
from ._poison import FEATURES, PoisonModel
from ._policy import TrustPolicy
from ._store import Shard

if TYPE_CHECKING:
    from ._index import GuardedIndex

__all__ = ["load_index", "save_index"]

FORMAT = "guarded-retriever/index/v2"
_OLD_FORMATS = {"guarded-retriever/index/v1": "it keys documents and revocations by xxh64, which is not "
                "collision resistant; re-ingest its documents from their sources (their signed "
                "manifests still verify) into an index of this version and save that"}
_CONTEXT = b"guarded-retriever/index-manifest/v1\n"
_MANIFEST, _SIGNATURE = "MANIFEST.json", "MANIFEST.sig"
MAX_MANIFEST_BYTES = 64 << 20
"""A manifest lists about 20 files per shard (~2 kB): this allows some 30,000 shards."""
_MAX_SIGNATURE_BYTES = 1024


def _read_capped(path: Path, cap: int, root: Path) -> bytes:
    """A small file's bytes, refusing (before reading) one larger than ``cap``."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(cap + 1) if size <= cap else b""
    if size > cap or len(data) > cap:
        raise IntegrityError(f"{root}: {path.name} is larger than the {cap} bytes it may be")
    return data


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
        # A flat index is rebuilt from the vectors faster than it is read; an IVF one is saved
        # without its inverted lists when they hold exactly the saved vectors (they always do).
        if trained is not None and not _write_ivf(trained, shard.dense.vectors[alive], out):
            faiss.write_index(trained, str(out / "faiss.index"))
    return len(rows)


def _write_ivf(index: Any, vectors: np.ndarray, out: Path) -> bool:
    """Save an ``IndexIVFFlat`` as its trained, empty shell (``ivf.index``) plus each inverted
    list's row ids (``ivf_ids.npy``, list by list, in list order; ``ivf_sizes.npy``).

    The lists' codes are the rows' float32 vectors, which ``vectors.npy`` holds already: storing
    them again doubled the file that is read and hashed at load (150 MB at 100k × 384). Returns
    ``False`` (and writes nothing) when the index is not of that kind or a code differs from its
    row's vector, so the caller writes the whole index instead.
    """
    if not isinstance(index, faiss.IndexIVFFlat) or index.ntotal != len(vectors):
        return False
    invlists = index.invlists
    dim = vectors.shape[1]
    sizes = np.array([invlists.list_size(j) for j in range(index.nlist)], dtype=np.int64)
    ids: list[np.ndarray] = []
    for j in np.flatnonzero(sizes).tolist():
        n = int(sizes[j])
        list_ids = faiss.rev_swig_ptr(invlists.get_ids(j), n).copy()
        codes = faiss.rev_swig_ptr(invlists.get_codes(j), n * invlists.code_size).view(np.float32)
        if invlists.code_size != 4 * dim or list_ids.min() < 0 or list_ids.max() >= len(vectors) \
                or not np.array_equal(codes.reshape(n, dim), vectors[list_ids]):
            return False
        ids.append(list_ids)
    shell = faiss.clone_index(index)
    shell.reset()
    faiss.write_index(shell, str(out / "ivf.index"))
    np.save(out / "ivf_ids.npy", np.concatenate(ids) if ids else np.zeros(0, np.int64))
    np.save(out / "ivf_sizes.npy", sizes)
    return True


def _fill_ivf(shell: Any, vectors: np.ndarray, ids: np.ndarray, sizes: np.ndarray, d: str) -> Any:
    """Refill an empty ``IndexIVFFlat`` from the verified vectors: the inverted lists it was saved
    with, entry for entry, in the same order."""
    n = len(vectors)
    if (not isinstance(shell, faiss.IndexIVFFlat) or shell.ntotal != 0 or shell.d != vectors.shape[1]
            or ids.dtype != np.int64 or ids.ndim != 1 or sizes.ndim != 1 or len(sizes) != shell.nlist
            or len(ids) != n or (len(sizes) and sizes.min() < 0) or int(sizes.sum()) != n
            or not np.array_equal(np.sort(ids), np.arange(n))):
        raise IntegrityError(f"{d}: the IVF lists do not match the vectors")
    codes = np.ascontiguousarray(vectors[ids], dtype=np.float32).view(np.uint8).reshape(-1)  # list order
    ids = np.ascontiguousarray(ids)
    invlists, width = shell.invlists, shell.code_size
    if width != 4 * shell.d:
        raise IntegrityError(f"{d}: the IVF index does not store float32 vectors")
    start = 0
    for j, size in enumerate(sizes.tolist()):
        if size:
            invlists.add_entries(j, size, faiss.swig_ptr(ids[start:start + size]),
                                 faiss.swig_ptr(codes[start * width:(start + size) * width]))
            start += size
    shell.ntotal = n
    return shell


def save_index(index: GuardedIndex, path: str | Path, *, signer: ManifestSigner | None) -> Path:
    """Write ``index`` to the directory ``path`` (created; it must not exist yet).

    Args:
        signer: signs the checksum manifest. ``None`` writes an unsigned index, which
            :func:`load_index` refuses unless told ``allow_unsigned=True``.
    """
    dest = Path(path)
    if dest.exists():
        raise IntegrityError(f"{dest} exists: save into a new directory")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Write next to the destination, then rename: a crash never leaves a half-written index there.
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    except OSError as exc:
        raise SaveError(exc.errno, f"cannot save to {dest}: {exc.strerror or exc}") from exc
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
        written = [p for p in sorted(tmp.rglob("*")) if p.is_file()]
        files = {p.relative_to(tmp).as_posix(): _sha256(p) for p in written}
        sizes = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in written}
        generation = index.generation + 1
        manifest = orjson.dumps({
            "format": FORMAT,
            "generation": generation,
            "created": time.time(),
            "signer": signer.public_key if signer is not None else None,
            "files": files,
            "sizes": sizes,  # signed, so load can stat before it reads (added within v2: optional)
        }, option=orjson.OPT_SORT_KEYS)
        (tmp / _MANIFEST).write_bytes(manifest)
        if signer is not None:
            (tmp / _SIGNATURE).write_text(signer.sign_bytes(_CONTEXT + manifest).hex(), encoding="ascii")
        os.replace(tmp, dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        # A full or read-only disk surfaces as OSError or as sqlite3's error from the ledger copy.
        if isinstance(exc, OSError) and not isinstance(exc, GuardedRetrieverError):
            raise SaveError(exc.errno, f"cannot save to {dest}: {exc.strerror or exc}; nothing was "
                            "written there") from exc
        if isinstance(exc, sqlite3.Error):
            raise SaveError(f"cannot save to {dest}: the ledger copy failed ({exc}); nothing was "
                            "written there") from exc
        raise
    index.generation = generation
    return dest


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # read_bytes below reports it


def _is_faiss(name: str) -> bool:
    return name.rsplit("/", 1)[-1] in ("faiss.index", "ivf.index")


def _read_and_hash(path: Path, size: int, *, faiss_reader: bool = False) -> tuple[Any, str]:
    """A file's first ``size`` bytes (its checked size) and their sha256; ``""`` as the digest
    when the file is not exactly ``size`` bytes long. A FAISS index is read straight into the
    buffer FAISS parses (a ``VectorIOReader``), which saves copying a 150 MB file into a second
    buffer."""
    if not faiss_reader:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size != size:  # swapped since it was checked: read nothing
                return b"", ""
            data = f.read(size)
            if len(data) != size or f.read(1):
                return data, ""  # changed while being read: reported as modified
        return data, hashlib.sha256(data).hexdigest()
    reader = faiss.VectorIOReader()
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size != size:
            return reader, ""
        reader.data.resize(size)
        view: memoryview = (faiss.rev_swig_ptr(reader.data.data(), size) if size else np.zeros(0, np.uint8)).data
        if f.readinto(view) != size or f.read(1):
            return reader, ""  # changed while being read: reported as modified
    return reader, hashlib.sha256(view).hexdigest()


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _check_generation(root: Path, found: int, min_generation: int | None, generation: int | None) -> None:
    """Refuse a saved index older than (or other than) the generation the caller requires."""
    for name, value in (("min_generation", min_generation), ("generation", generation)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
    if generation is not None and found != generation:
        raise RollbackError(
            f"{root} is generation {found}, not the generation {generation} required: a different "
            "snapshot is in place (an older one undoes revocations and freezes). Restore the copy "
            "you expect, or pass the generation you mean to load", generation=found, required=generation)
    if min_generation is not None and found < min_generation:
        raise RollbackError(
            f"{root} is generation {found}, older than the generation {min_generation} required: an "
            "older snapshot was put back (it would undo later revocations and freezes). Restore "
            f"the newest copy, or pass min_generation={found} if the rollback is intended",
            generation=found, required=min_generation)


def _verified_files(root: Path, trusted_signers: Iterable[str], allow_unsigned: bool,
                    pool: ThreadPoolExecutor | None = None, faiss_readers: bool = False, *,
                    min_generation: int | None = None, generation: int | None = None,
                    keep: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the signature and every file's size, then read every listed file once and check
    its sha256 (with ``keep=False`` hash each in a stream and keep nothing).

    Every value is the file's ``bytes``; with ``faiss_readers``, a ``faiss.index`` file's is the
    ``faiss.VectorIOReader`` holding its (verified) bytes instead.

    The bytes that were hashed are the bytes that get parsed (no second read that a concurrent
    writer could swap), and a name in the manifest can only point inside ``root``.
    """
    try:
        raw = _read_capped(root / _MANIFEST, MAX_MANIFEST_BYTES, root)
        manifest = orjson.loads(raw)
        files: dict[str, str] = dict(manifest["files"])
        signer = manifest.get("signer")
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{root}: no readable {_MANIFEST} ({exc})") from None
    if manifest.get("format") in _OLD_FORMATS:
        raise IndexFormatError(f"{root} was saved in format {manifest['format']!r}, which this version "
                               f"refuses: {_OLD_FORMATS[manifest['format']]}")
    if manifest.get("format") != FORMAT:
        raise IntegrityError(f"{root}: unknown format {manifest.get('format')!r}")
    found = manifest.get("generation")
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise IntegrityError(f"{root}: {_MANIFEST} has no valid generation")
    sig_path = root / _SIGNATURE
    if sig_path.exists():
        if not isinstance(signer, str) or signer not in set(trusted_signers):
            raise UntrustedSignerError(f"{root} is signed by {str(signer)[:16]}..., which is not trusted")
        try:
            signature = _read_capped(sig_path, _MAX_SIGNATURE_BYTES, root)
        except OSError as exc:
            raise IntegrityError(f"{root}: cannot read {_SIGNATURE} ({exc})") from None
        try:
            nacl.signing.VerifyKey(bytes.fromhex(signer)).verify(
                _CONTEXT + raw, bytes.fromhex(signature.decode("ascii").strip()))
        except (OSError, ValueError, nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
            raise SignatureError(f"{root}: the index signature does not verify ({exc})") from None
    elif signer is not None:
        # Signed once, signature gone: that is tampering, not an unsigned index.
        raise IntegrityError(f"{root}: the manifest names signer {str(signer)[:16]}... but its signature was removed")
    elif not allow_unsigned:
        raise IntegrityError(f"{root} is unsigned; pass allow_unsigned=True to load it anyway")
    _check_generation(root, manifest["generation"], min_generation, generation)
    signed_sizes = _signed_sizes(root, manifest, files)
    base = root.resolve()
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {_MANIFEST, _SIGNATURE}
    if present != set(files):
        raise IntegrityError(f"{root}: files missing {sorted(set(files) - present)},"
                             f" unlisted {sorted(present - set(files))}")
    paths: dict[str, Path] = {}
    for name in files:
        path = (root / name).resolve()
        if base not in path.parents:
            raise IntegrityError(f"{root}: manifest entry {name!r} points outside the index")
        paths[name] = path
    # Sizes before contents: a file that is not the size the signer wrote is refused before a
    # byte of it is read, so a huge or sparse file swapped in costs no memory.
    sizes = {name: _size(path) for name, path in paths.items()}
    if signed_sizes is not None:
        for name in files:  # report the first bad file in manifest order
            if sizes[name] != signed_sizes[name]:
                raise IntegrityError(f"{root}: {name} has been modified or truncated (it is {sizes[name]} "
                                     f"bytes, not the {signed_sizes[name]} signed)")
    # Read and hash the files on a few threads (both release the GIL), largest first so the big
    # vector and FAISS files do not end up on the same thread. Each file is read once, into
    # memory: what is hashed is what gets parsed.
    order = sorted(files, key=lambda n: -sizes[n])

    def read_one(name: str) -> tuple[Any, str]:
        if not keep:
            return None, _sha256(paths[name])
        if signed_sizes is None and _sha256(paths[name]) != files[name]:
            # No signed size (a save from before sizes were signed): a stream first, so a file
            # that does not match costs a chunk of memory, not its size.
            return None, ""
        return _read_and_hash(paths[name], sizes[name], faiss_reader=faiss_readers and _is_faiss(name))

    if pool is None or len(order) < 2:
        read = {name: read_one(name) for name in order}
    else:
        read = dict(zip(order, pool.map(read_one, order), strict=True))
    blobs: dict[str, Any] = {}
    for name, digest in files.items():  # report the first bad file in manifest order
        data, actual = read[name]
        if actual != digest:
            raise IntegrityError(f"{root}: {name} has been modified or truncated")
        if keep:
            blobs[name] = data
    return dict(manifest), blobs


def _signed_sizes(root: Path, manifest: dict[str, Any], files: dict[str, str]) -> dict[str, int] | None:
    """The manifest's file sizes; ``None`` for a save written before sizes were signed."""
    sizes = manifest.get("sizes")
    if sizes is None:
        return None
    if (not isinstance(sizes, dict) or set(sizes) != set(files)
            or not all(type(v) is int and v >= 0 for v in sizes.values())):
        raise IntegrityError(f"{root}: {_MANIFEST} lists sizes that do not match its files")
    return sizes


def verify_saved(path: str | Path, *, trusted_signers: Iterable[str] = (), allow_unsigned: bool = False,
                 min_generation: int | None = None, generation: int | None = None) -> dict[str, Any]:
    """Check a saved index's signature and checksums without loading it; returns its manifest
    (``manifest["generation"]`` is its generation).

    Raises:
        IntegrityError: unsigned (and not allowed), a file missing, unlisted or changed.
        IndexFormatError: saved in a format this version refuses.
        RollbackError: its generation is below ``min_generation``, or not ``generation``.
        UntrustedSignerError: signed by a key that is not on ``trusted_signers``.
        SignatureError: the signature does not verify, or was removed.
    """
    with ThreadPoolExecutor(_workers()) as pool:
        manifest, _ = _verified_files(Path(path), trusted_signers, allow_unsigned, pool,
                                      min_generation=min_generation, generation=generation, keep=False)
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
    min_generation: int | None = None,
    generation: int | None = None,
) -> GuardedIndex:
    """Verify and load a saved index (see the module docstring for what is checked).

    Args:
        trusted_signers: hex ed25519 keys whose signature is accepted.
        allow_unsigned: load an index saved without a signer (only for trusted storage).
        embedder: for queries without vectors, as in :class:`GuardedIndex`.
        ledger_path: where the loaded ledger lives from now on; in memory when ``None``.
        min_generation: refuse a saved index of an older generation (a rollback).
        generation: refuse any saved index but this generation.

    Raises:
        IntegrityError, SignatureError, UntrustedSignerError: see :func:`verify_saved`; also an
            ``IntegrityError`` when a verified file does not parse (an unsigned index written by
            hand, say).
    """
    root = Path(path)
    with ThreadPoolExecutor(_workers()) as pool:
        manifest, blobs = _verified_files(root, trusted_signers, allow_unsigned, pool, True,  # FAISS readers
                                          min_generation=min_generation, generation=generation)
        # Everything is verified. The FAISS indexes deserialise on the pool (faiss releases the
        # GIL) while this thread restores the ledger and parses the rest.
        readers = {name: blobs.pop(name) for name in [n for n in blobs if _is_faiss(n)]}
        trained: dict[str, Future[Any]] = {}
        for name, reader in readers.items():
            d, _, kind = name.rpartition("/")
            if kind == "ivf.index":  # the shell, refilled from the verified vectors and list ids
                trained[name] = pool.submit(_read_ivf, reader, blobs, d)
            else:
                trained[name] = pool.submit(faiss.read_index, reader)
        try:
            index = _build_index(root, blobs, trained, embedder, ledger_path)
            index.generation = manifest["generation"]
            return index
        finally:
            for future in trained.values():
                future.cancel()


def _read_ivf(reader: Any, blobs: dict[str, Any], d: str) -> Any:
    prefix = f"{d}/" if d else ""

    def npy(name: str) -> np.ndarray:
        return _npy(blobs[f"{prefix}{name}.npy"], f"{prefix}{name}.npy")

    return _fill_ivf(faiss.read_index(reader), npy("vectors"), npy("ivf_ids"), npy("ivf_sizes"), d)


def _build_index(root: Path, blobs: dict[str, Any], trained: dict[str, Future[Any]], embedder: Any,
                 ledger_path: str | Path | None) -> GuardedIndex:
    from ._index import GuardedIndex

    try:
        meta = orjson.loads(blobs["index.json"])
        ledger = Ledger(ledger_path if ledger_path is not None else ":memory:")
        _restore_ledger(ledger, blobs["ledger.sqlite"])
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
            _read_shard(shard, blobs, str(entry["dir"]), trained)
    except GuardedRetrieverError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, sqlite3.Error, RuntimeError, orjson.JSONDecodeError) as exc:
        raise IntegrityError(f"{root}: a verified file does not parse ({type(exc).__name__}: {exc})") from None
    return index


def _restore_ledger(ledger: Ledger, data: bytes) -> None:
    """Restore the ledger from the verified bytes: deserialised in memory when SQLite can."""
    source = sqlite3.connect(":memory:")
    try:
        source.deserialize(data)
        ledger.restore_from(source)
        return
    except (AttributeError, sqlite3.Error):
        # No sqlite3_deserialize, or an image it cannot open from memory (a ledger saved from a
        # WAL-mode file keeps WAL in its header): restore from a file instead.
        pass
    finally:
        source.close()
    with tempfile.TemporaryDirectory() as tmp:  # sqlite reads files, so the verified bytes go to one
        db = Path(tmp) / "ledger.sqlite"
        db.write_bytes(data)
        with sqlite3.connect(db) as source:
            ledger.restore_from(source)
        source.close()


class _Blob:
    """Row ``i`` of a blob file is ``data[offsets[i]:offsets[i + 1]]``, decoded when asked for."""

    __slots__ = ("_data", "_decode", "_offsets")

    def __init__(self, data: bytes, offsets: np.ndarray, *, decode: Any) -> None:
        self._data, self._offsets, self._decode = data, offsets.tolist(), decode

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> Any:
        return self._decode(self._data[self._offsets[i]: self._offsets[i + 1]])


def _read_shard(shard: Shard, blobs: dict[str, Any], d: str, trained_futures: dict[str, Future[Any]]) -> None:
    def npy(name: str) -> np.ndarray:
        return _npy(blobs[f"{d}/{name}.npy"], f"{d}/{name}.npy")

    columns = orjson.loads(blobs[f"{d}/rows.json"])
    for name in ("provenance", "poison", "features"):
        columns[name] = npy(name)
    width = len(FEATURES)
    if columns["features"].ndim == 2 and columns["features"].shape[1] < width:
        # Saved before the newest features existed: they are appended last, so pad with 0.
        f = columns["features"]
        columns["features"] = np.hstack([f, np.zeros((len(f), width - f.shape[1]), f.dtype)])
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
    future = trained_futures.get(f"{d}/faiss.index")
    trained = future.result() if future is not None else None
    refilled = trained_futures.get(f"{d}/ivf.index")
    if refilled is not None:
        trained = refilled.result()
    shard.restore(columns, bm25, vectors, trained)
