"""The ``guarded-retriever`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(embedder=args.embedder, show_contract=not args.no_contract)


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
