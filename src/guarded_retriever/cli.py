"""The ``guarded-retriever`` command line.

``demo`` and ``redteam`` run the bundled examples. The incident-response subcommands work on a
saved index directory (see :meth:`guarded_retriever.GuardedIndex.save`)::

    guarded-retriever metrics INDEX_DIR --trusted-signer HEX
    guarded-retriever export  INDEX_DIR --trusted-signer HEX [--content-hash H] [--fingerprint F] [--manifest M]
                              [--domain D] [--reason R] [--out FILE]
    guarded-retriever freeze  INDEX_DIR --trusted-signer HEX --signing-key FILE --namespace KEY --reason TEXT
    guarded-retriever unfreeze INDEX_DIR --trusted-signer HEX --signing-key FILE --namespace KEY
    guarded-retriever revoke  INDEX_DIR --trusted-signer HEX --signing-key FILE
                              (--content-hash H | --manifest M) --reason TEXT
    guarded-retriever rebuild INDEX_DIR --trusted-signer HEX --signing-key FILE
    guarded-retriever verify  INDEX_DIR --trusted-signer HEX --gold FILE.jsonl [--embedder hashing]

Every command verifies the index's signature and checksums before it reads anything, and with
``--min-generation N`` (or ``--generation N``) refuses an older, validly signed copy put back over a
newer one (each save prints the generation it wrote); trusted keys
come from ``--trusted-signer`` (repeatable) and ``$GUARDED_RETRIEVER_TRUSTED_SIGNERS``
(comma-separated). ``--allow-unsigned`` accepts an unsigned index. The mutating commands
(``freeze``, ``unfreeze``, ``revoke``, ``rebuild``) save the index back, re-signed with
``--signing-key`` (or ``$GUARDED_RETRIEVER_SIGNING_KEY_FILE``): a file holding the 32-byte ed25519
seed as 64 hex characters. Without a key they refuse, unless ``--allow-unsigned`` is given, and then
they save unsigned. The new index is written next to the old one and swapped in by two renames.

Exit codes: 0 success, 1 ``verify`` failed its gold queries, 2 the index was refused or the command
could not run (one ``error: ...`` line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._index import GuardedIndex
    from ._manifest import ManifestSigner

__all__ = ["main"]

TRUSTED_SIGNERS_ENV = "GUARDED_RETRIEVER_TRUSTED_SIGNERS"
SIGNING_KEY_ENV = "GUARDED_RETRIEVER_SIGNING_KEY_FILE"
_HEX = frozenset("0123456789abcdef")


class CommandError(Exception):
    """A command cannot run (bad option, unreadable file); reported as ``error: ...``, exit 2."""


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(embedder=args.embedder, show_contract=not args.no_contract)


def _redteam(args: argparse.Namespace) -> int:
    from ._exceptions import GuardedRetrieverError
    from .redteam import format_report, load_bundle, plot_run, run_bundle, score_run, score_runs

    try:  # every bundle checked before the first one runs for minutes
        bundles = [load_bundle(path) for path in args.bundle]
        for bundle in bundles:
            if not (bundle.path / "labels.tsv").is_file():
                raise CommandError(f"{bundle.path} has no labels.tsv: it cannot be scored")
    except (GuardedRetrieverError, CommandError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    embedder = _embedder(None if args.embedder == "bundle" else args.embedder, None)
    runs = [run_bundle(b, embedder=embedder, progress=None if not args.quiet else False) for b in bundles]
    if len(runs) == 1:
        output: dict[str, Any] = score_run(runs[0])
        reports = {output["bundle"]: output}
        tables = [format_report(output)]
    else:
        output = score_runs(runs)
        reports = output["bundles"]
        tables = [*map(format_report, reports.values()), format_report(output["combined"])]
    text = json.dumps(output, indent=2, ensure_ascii=False)
    json_to_stdout = args.json is not None and str(args.json) == "-"
    if args.json and not json_to_stdout:
        args.json.write_text(text + "\n", encoding="utf-8")
    if args.plot:
        for run, (name, report) in zip(runs, reports.items(), strict=True):
            tag = re.sub(r"[^\w.#-]+", "_", name).strip("_")  # a whole path when two names clash
            path = args.plot if len(runs) == 1 else args.plot.with_name(f"{args.plot.stem}-{tag}{args.plot.suffix}")
            plot_run(run, report, path)
    if json_to_stdout:
        print(text)
    elif not (args.json and args.quiet):
        print("\n\n".join(tables))
    return 0


# -- incident response on a saved index ---------------------------------------------------------


def _hex_key(value: str, what: str) -> str:
    key = value.strip().lower()
    if len(key) != 64 or not set(key) <= _HEX:
        raise CommandError(f"{what} must be 64 hex characters (an ed25519 public key), got {value.strip()!r}")
    return key


def _trusted_signers(args: argparse.Namespace) -> list[str]:
    keys = [_hex_key(k, "--trusted-signer") for k in args.trusted_signer or ()]
    env = os.environ.get(TRUSTED_SIGNERS_ENV, "")
    keys += [_hex_key(k, f"${TRUSTED_SIGNERS_ENV}") for k in env.split(",") if k.strip()]
    return list(dict.fromkeys(keys))


def _signer(args: argparse.Namespace) -> ManifestSigner | None:
    """The signing key for a mutating command; ``None`` only when ``--allow-unsigned`` was given."""
    from ._manifest import ManifestSigner

    path = args.signing_key or os.environ.get(SIGNING_KEY_ENV) or None
    if path is None:
        if args.allow_unsigned:
            return None
        raise CommandError(f"{args.command} saves the index back: pass --signing-key FILE (or set "
                           f"${SIGNING_KEY_ENV}), or --allow-unsigned to save it unsigned")
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read the signing key {path}: {exc}") from None
    # Checked here, not by _hex_key: its error message would echo the secret seed.
    if len(text) != 64 or not set(text.lower()) <= _HEX:
        raise CommandError(f"the signing key {path} must hold a 32-byte ed25519 seed as 64 hex characters")
    return ManifestSigner.from_seed(bytes.fromhex(text))


def _embedder(name: str | None, dim: int | None) -> Any:
    if name in (None, "none"):
        return None
    from ._embed import HashingEmbedder, MiniLMEmbedder

    if name == "minilm":
        return MiniLMEmbedder()
    return HashingEmbedder(dim or 384)


def _load(args: argparse.Namespace, path: Path, *, embedder: str | None = None) -> GuardedIndex:
    from ._index import GuardedIndex

    trusted = _trusted_signers(args)
    if not trusted and not args.allow_unsigned:
        raise CommandError(f"no trusted signer: pass --trusted-signer HEX (or set ${TRUSTED_SIGNERS_ENV}), "
                           "or --allow-unsigned for an unsigned index")
    index = GuardedIndex.load(path, trusted_signers=trusted, allow_unsigned=args.allow_unsigned,
                              min_generation=args.min_generation, generation=args.generation)
    # Built after the load so the hashing embedder gets the index's own dimension.
    model = _embedder(embedder, index.dim)
    if model is not None:
        index.embedder = model
    return index


@contextlib.contextmanager
def _locked(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Lock ``path`` while a command loads it (shared) or loads, changes and swaps it (exclusive).

    Without it, two operators revoking at once would each save their own copy and one revocation
    would be lost, and a reader could verify the old directory and parse the new one. The lock
    file lives next to the index, never inside it (that would be an unlisted file). A reader that
    cannot create it (a read-only parent) goes on unlocked; where ``fcntl`` is missing (Windows),
    commands are not serialised.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock = path.parent / f".{path.name}.lock"
    try:
        fh = lock.open("a")
    except OSError:
        if exclusive:
            raise
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _save_over(index: GuardedIndex, path: Path, signer: ManifestSigner | None) -> None:
    """Save ``index`` to a sibling directory, then swap it in: rename the old one away, rename the
    new one in, delete the old one. A failure before the swap leaves the old index untouched."""
    token = uuid.uuid4().hex[:12]
    fresh = path.parent / f".{path.name}.{token}.new"
    old = path.parent / f".{path.name}.{token}.old"
    try:
        index.save(fresh, signer=signer)
        path.rename(old)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    try:
        fresh.rename(path)
    except BaseException:
        old.rename(path)
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    who = f"signed by {signer.public_key}" if signer is not None else "UNSIGNED"
    print(f"saved {path} ({who}, generation {index.generation}: pass --min-generation "
          f"{index.generation} from now on to refuse an older copy)", file=sys.stderr)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _namespace(value: str) -> Any:
    """``--namespace``: the canonical ``k=v|k=v`` key, or a JSON object."""
    if value.lstrip().startswith("{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--namespace is not valid JSON: {exc}") from None
        return parsed
    return value


Result = tuple[int, Any]
"""A command's exit code and the JSON it prints (``None``: nothing), once the index is saved back."""


def _freeze(args: argparse.Namespace, index: GuardedIndex) -> Result:
    key = index.pipeline.schema.parse(_namespace(args.namespace)).key
    if key not in index.namespaces():
        print(f"note: namespace {key!r} holds no documents yet; freezing it anyway", file=sys.stderr)
    index.freeze(key, reason=args.reason)
    return 0, {"frozen": index.ledger.frozen()}


def _unfreeze(args: argparse.Namespace, index: GuardedIndex) -> Result:
    key = index.pipeline.schema.parse(_namespace(args.namespace)).key
    if not index.ledger.is_frozen(key):
        raise CommandError(f"namespace {key!r} is not frozen")
    index.unfreeze(key)
    return 0, {"frozen": index.ledger.frozen()}


def _check_hex(value: str | None, n: int, what: str) -> str | None:
    if value is not None and (len(value) != n or not set(value) <= _HEX):
        raise CommandError(f"{what} must be {n} lowercase hex characters, got {value!r}")
    return value


def _revoke(args: argparse.Namespace, index: GuardedIndex) -> Result:
    from ._fingerprint import is_legacy_hash

    chash = args.content_hash
    # An old 16-digit xxh64 hash goes to the core, whose error says what to do instead.
    report = index.revoke(content_hash=chash if is_legacy_hash(chash) else _check_hex(chash, 32, "--content-hash"),
                          manifest_id=_check_hex(args.manifest, 32, "--manifest"),
                          reason=args.reason, embedder=index.embedder)
    if not report.removed:
        print(f"note: no stored document matched {report.kind} {report.value}; it is refused from now on",
              file=sys.stderr)
    return 0, asdict(report)


def _rebuild(args: argparse.Namespace, index: GuardedIndex) -> Result:
    return 0, index.rebuild()


def _export(args: argparse.Namespace, index: GuardedIndex) -> Result:
    rows = index.export_suspects(content_hash=args.content_hash, manifest_id=args.manifest,
                                 domain=args.domain, reason=args.reason, fingerprint=args.fingerprint)
    lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    if args.out is None:
        sys.stdout.write(lines)
    else:
        try:
            args.out.write_text(lines, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {args.out}: {exc}") from None
    print(f"exported {len(rows)} document(s)", file=sys.stderr)
    return 0, None


def _read_gold(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read the gold file {path}: {exc}") from None
    gold = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CommandError(f"{path}:{n}: not JSON ({exc})") from None
        if not isinstance(item, dict) or not isinstance(item.get("query"), str) or "namespace" not in item:
            raise CommandError(f'{path}:{n}: a gold line is {{"query", "namespace", "expect": [...]}}')
        gold.append(item)
    if not gold:
        raise CommandError(f"{path} has no gold queries")
    return gold


def _verify(args: argparse.Namespace, index: GuardedIndex) -> Result:
    gold = _read_gold(args.gold)
    if index.embedder is None:
        missing = [g["query"] for g in gold if g.get("query_vector") is None]
        if missing:
            raise CommandError(f"{len(missing)} gold queries have no query_vector (first: {missing[0]!r}) and "
                               "a saved index has no embedder: pass --embedder hashing|minilm")
    report = index.verify(gold, k=args.k, max_delta_s=args.max_delta_s, min_coverage=args.min_coverage)
    return (0 if report.passed else 1), {"passed": report.passed, "coverage": report.coverage,
                                          "queries": report.queries}


def _metrics(args: argparse.Namespace, index: GuardedIndex) -> Result:
    return 0, index.metrics()


def _incident(command: Callable[[argparse.Namespace, GuardedIndex], Result], *, mutates: bool
              ) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: verify and load the index, run it, save it back when it ``mutates``."""

    def run(args: argparse.Namespace) -> int:
        from ._exceptions import GuardedRetrieverError

        path = Path(args.index).resolve()  # "." has no name to put a sibling next to
        try:
            if not path.is_dir():
                raise CommandError(f"{path} is not an index directory")
            signer = _signer(args) if mutates else None  # refuse before any work
            with _locked(path, exclusive=mutates):
                index = _load(args, path, embedder=getattr(args, "embedder", None))
                code, output = command(args, index)
                if mutates:
                    _save_over(index, path, signer)
        except (GuardedRetrieverError, CommandError, OSError) as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            print(f"error: {type(exc).__name__}: {message}" if isinstance(exc, GuardedRetrieverError | OSError)
                  else f"error: {message}", file=sys.stderr)
            return 2
        if output is not None:
            _print_json(output)
        return code

    return run


def _index_options(parser: argparse.ArgumentParser, *, mutates: bool) -> None:
    parser.add_argument("index", type=Path, metavar="INDEX_DIR", help="a directory written by GuardedIndex.save")
    parser.add_argument("--trusted-signer", action="append", metavar="HEX",
                        help=f"an ed25519 public key whose signature is accepted (repeatable; also "
                             f"${TRUSTED_SIGNERS_ENV}, comma-separated)")
    parser.add_argument("--min-generation", type=int, metavar="N",
                        help="refuse a saved index older than generation N (a rollback to an earlier, "
                             "validly signed copy); every save prints its generation")
    parser.add_argument("--generation", type=int, metavar="N", help="refuse any saved index but generation N")
    parser.add_argument("--allow-unsigned", action="store_true",
                        help="accept an unsigned index" + ("; save unsigned when no signing key is given"
                                                          if mutates else ""))
    if mutates:
        parser.add_argument("--signing-key", type=Path, metavar="FILE",
                            help=f"the ed25519 seed (64 hex characters) that re-signs the saved index "
                                 f"(default ${SIGNING_KEY_ENV})")


def _embedder_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--embedder", choices=("none", "hashing", "minilm"), default="none", help=help)


def _add_incident_commands(sub: Any) -> None:
    p = sub.add_parser("freeze", help="refuse every write to a namespace (saved back, re-signed)")
    _index_options(p, mutates=True)
    p.add_argument("--namespace", required=True, metavar="KEY",
                   help='"tenant_id=a|product_id=b|env=c" or a JSON object')
    p.add_argument("--reason", required=True, help="why (recorded in the ledger's audit events)")
    p.set_defaults(func=_incident(_freeze, mutates=True))

    p = sub.add_parser("unfreeze", help="accept writes to a frozen namespace again (saved back, re-signed)")
    _index_options(p, mutates=True)
    p.add_argument("--namespace", required=True, metavar="KEY",
                   help='"tenant_id=a|product_id=b|env=c" or a JSON object')
    p.set_defaults(func=_incident(_unfreeze, mutates=True))

    p = sub.add_parser("export", help="write stored documents matching every filter as JSONL")
    _index_options(p, mutates=False)
    p.add_argument("--content-hash", metavar="H", help="a content hash (32 hex digits, BLAKE2b)")
    p.add_argument("--fingerprint", metavar="F",
                   help="an xxh64 fingerprint (16 hex digits) as older reports named documents; "
                        "revoke what it finds by --content-hash")
    p.add_argument("--manifest", metavar="M", help="a manifest id")
    p.add_argument("--domain", metavar="D", help="the source URL's host or a parent domain")
    p.add_argument("--reason", metavar="R", help="a poison reason, e.g. instruction_override")
    p.add_argument("--out", type=Path, metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=_incident(_export, mutates=False))

    p = sub.add_parser("revoke", help="remove a content hash or a manifest everywhere and refuse it from now on")
    _index_options(p, mutates=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--content-hash", metavar="H")
    which.add_argument("--manifest", metavar="M", help="a manifest id")
    p.add_argument("--reason", required=True, help="why (recorded with the revocation)")
    _embedder_option(p, "re-embed the removed documents' neighbours with this embedder (the one the index "
                        "was built with); default: keep their vectors")
    p.set_defaults(func=_incident(_revoke, mutates=True))

    p = sub.add_parser("rebuild", help="compact every shard (drop deleted rows, retrain FAISS)")
    _index_options(p, mutates=True)
    p.set_defaults(func=_incident(_rebuild, mutates=True))

    p = sub.add_parser("verify", help="re-run gold queries; exit 0 when all pass, 1 otherwise")
    _index_options(p, mutates=False)
    p.add_argument("--gold", type=Path, required=True, metavar="FILE.jsonl",
                   help='lines of {"query", "namespace", "expect": [ids], "query_vector": [...] (optional)}')
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--max-delta-s", type=float, default=0.6)
    p.add_argument("--min-coverage", type=float, default=1.0)
    _embedder_option(p, "embed queries that have no query_vector (a saved index has no embedder)")
    p.set_defaults(func=_incident(_verify, mutates=False))

    p = sub.add_parser("metrics", help="print the index's metrics snapshot as JSON")
    _index_options(p, mutates=False)
    p.set_defaults(func=_incident(_metrics, mutates=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guarded-retriever",
        description="Guarded hybrid retrieval: provenance, poison quarantine, fail-closed namespaces.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="ingest the bundled two-tenant sample and run guarded queries")
    demo.add_argument(
        "--embedder",
        choices=("auto", "minilm", "hashing"),
        default="auto",
        help="auto: MiniLM when the `embed` extra is installed, else the hashing embedder",
    )
    demo.add_argument("--no-contract", action="store_true", help="do not print the contract JSON")
    demo.set_defaults(func=_demo)

    redteam = sub.add_parser(
        "redteam", help="ingest red-team bundles, run their queries, score detection and retrieval",
        description="Run each bundle through a guarded and an unguarded index and print a table per bundle "
                    "(and a combined one for several). Documents and queries that cannot be ingested or run "
                    "are skipped and counted.",
    )
    redteam.add_argument("bundle", type=Path, nargs="+", metavar="BUNDLE",
                         help="a bundle directory (corpus.jsonl, queries.jsonl, labels.tsv, ...); several may be given")
    redteam.add_argument("--json", type=Path, metavar="FILE",
                         help='write the report here ("-": on stdout instead of the tables); with several '
                              'bundles it is {"bundles": {name: report}, "combined": report}')
    redteam.add_argument("--plot", type=Path, metavar="FILE.png",
                         help="write the ROC and per-attack recall plot here; with several bundles one per "
                              "bundle, named FILE-BUNDLE.png")
    redteam.add_argument(
        "--embedder",
        choices=("bundle", "minilm", "hashing"),
        default="bundle",
        help="bundle: the bundle's precomputed vectors (embeddings/); otherwise embed with this model",
    )
    redteam.add_argument("--quiet", action="store_true",
                         help="no progress bar, and no tables on stdout when --json writes a file")
    redteam.set_defaults(func=_redteam)
    _add_incident_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
