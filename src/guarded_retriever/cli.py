"""The ``guarded-retriever`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(embedder=args.embedder, show_contract=not args.no_contract)


def _redteam(args: argparse.Namespace) -> int:
    import json

    from .redteam import plot_run, run_bundle, score_run

    embedder = None
    if args.embedder != "bundle":
        from ._embed import HashingEmbedder, MiniLMEmbedder

        embedder = MiniLMEmbedder() if args.embedder == "minilm" else HashingEmbedder()
    run = run_bundle(args.bundle, embedder=embedder, progress=None if not args.quiet else False)
    report = score_run(run)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    if args.plot:
        plot_run(run, report, args.plot)
    if not args.json or not args.quiet:
        print(text)
    return 0


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
        "redteam", help="ingest a red-team bundle, run its queries, score detection and retrieval"
    )
    redteam.add_argument("bundle", type=Path, help="the bundle directory (corpus.jsonl, queries.jsonl, ...)")
    redteam.add_argument("--json", type=Path, help="write the report here")
    redteam.add_argument("--plot", type=Path, help="write the ROC and per-attack recall plot here (PNG)")
    redteam.add_argument(
        "--embedder",
        choices=("bundle", "minilm", "hashing"),
        default="bundle",
        help="bundle: the bundle's precomputed vectors (embeddings/); otherwise embed with this model",
    )
    redteam.add_argument("--quiet", action="store_true", help="no progress bar, no report on stdout")
    redteam.set_defaults(func=_redteam)
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
