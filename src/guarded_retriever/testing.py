"""Test doubles for users' notebooks and tests: deterministic, offline, dependency-free."""

from __future__ import annotations

from ._embed import HashingEmbedder

__all__ = ["HashingEmbedder"]
