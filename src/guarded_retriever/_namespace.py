"""Namespaces: the fence around every document and every request.

A namespace is an ordered set of required keys, by default ``tenant_id``, ``product_id`` and
``env``. It fails closed: a missing key, an extra key, ``None``, an empty value, a non-string, or a
value outside ``[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}`` is rejected with :class:`NamespaceError`; nothing is
ever defaulted. Values are compared exactly, so ``Acme`` and ``acme`` are two tenants and a
Cyrillic look-alike of ``acme`` is refused outright (the pattern is ASCII-only).

Its canonical ``key`` (``tenant_id=acme|product_id=kb|env=prod``) is what the ledger stores and the
indexes compare; ``|`` and ``=`` cannot occur in a value, so two namespaces never share a key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ._exceptions import NamespaceError

__all__ = ["DEFAULT_NAMESPACE_KEYS", "Namespace", "NamespaceSchema", "audience"]

DEFAULT_NAMESPACE_KEYS: tuple[str, ...] = ("tenant_id", "product_id", "env")

_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class Namespace:
    """A validated namespace. Build one with :meth:`NamespaceSchema.parse` or :meth:`Namespace.of`."""

    items: tuple[tuple[str, str], ...]
    key: str = field(init=False, repr=False, compare=False)
    """The canonical string form, ``k1=v1|k2=v2|...`` in schema order (built once: every search
    and every fence compares it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", "|".join(f"{k}={v}" for k, v in self.items))

    @classmethod
    def of(cls, **values: str) -> Namespace:
        """A namespace with the default keys: ``Namespace.of(tenant_id=..., product_id=..., env=...)``."""
        return DEFAULT_SCHEMA.parse(values)

    def as_dict(self) -> dict[str, str]:
        return dict(self.items)

    def __getitem__(self, name: str) -> str:
        for k, v in self.items:
            if k == name:
                return v
        raise KeyError(name)

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True, slots=True)
class NamespaceSchema:
    """The keys every namespace must carry, in order."""

    keys: tuple[str, ...] = DEFAULT_NAMESPACE_KEYS

    def __post_init__(self) -> None:
        if not self.keys or len(set(self.keys)) != len(self.keys):
            raise NamespaceError(f"namespace keys must be distinct and non-empty, got {self.keys!r}")
        for k in self.keys:
            if not isinstance(k, str) or not _KEY.fullmatch(k):
                raise NamespaceError(f"namespace key {k!r} must match {_KEY.pattern}")

    def parse(self, value: Namespace | Mapping[str, Any] | str | None) -> Namespace:
        """Validate ``value`` (a :class:`Namespace`, a mapping or a canonical key) against the schema.

        Raises:
            NamespaceError: if any key is missing, extra, or has an invalid value.
        """
        # Every request parses one, so hashable values go through a cache. Exact types only: a
        # subclass could define __eq__ and __hash__ to collide with another tenant's cached entry.
        if type(value) is str or type(value) is Namespace:
            return _parse_hashable(self, value)
        if isinstance(value, Mapping) and len(value) == len(self.keys):
            # Exactly the schema's keys with str values: as a (not yet validated) Namespace it is
            # hashable, and the cache validates it like any other.
            items = tuple((k, v) for k in self.keys if type(v := value.get(k)) is str)
            if len(items) == len(self.keys):
                return _parse_hashable(self, Namespace(items))
        return self._parse(value)

    def _parse(self, value: Namespace | Mapping[str, Any] | str | None) -> Namespace:
        if isinstance(value, Namespace):
            mapping: Mapping[str, Any] = dict(value.items)
        elif isinstance(value, str):
            mapping = self._split_key(value)
        elif isinstance(value, Mapping):
            mapping = value
        else:
            raise NamespaceError(
                f"a namespace is required ({', '.join(self.keys)}); got {type(value).__name__}"
            )
        missing = [k for k in self.keys if k not in mapping]
        extra = [k for k in mapping if k not in self.keys]
        if missing or extra:
            raise NamespaceError(
                f"namespace must have exactly the keys {list(self.keys)}"
                f" (missing {missing}, unexpected {extra!r})"
            )
        items = []
        for k in self.keys:
            v = mapping[k]
            if not isinstance(v, str) or not _VALUE.fullmatch(v):
                raise NamespaceError(f"namespace value for {k!r} must match {_VALUE.pattern}; got {v!r}")
            items.append((k, v))
        return Namespace(tuple(items))

    def _split_key(self, key: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in key.split("|"):
            k, sep, v = part.partition("=")
            if not sep or k in out:
                raise NamespaceError(f"malformed namespace key {key!r}")
            out[k] = v
        return out


# Equal inputs validate alike (a Namespace compares by its items), and a refusal raises, which
# lru_cache never stores, so only valid namespaces are remembered; the bound keeps a flood of
# distinct namespaces from growing it.
@lru_cache(maxsize=4096)
def _parse_hashable(schema: NamespaceSchema, value: Namespace | str) -> Namespace:
    return schema._parse(value)


DEFAULT_SCHEMA = NamespaceSchema()


def audience(value: Namespace | Mapping[str, Any] | str) -> str:
    """A namespace as a signed manifest names it: its key with the keys sorted.

    A crawler signs without knowing the order of the index's ``namespace_keys``, so the name it
    signs must not depend on that order; values are validated as every namespace's are.

    Raises:
        NamespaceError: ``value`` is not a namespace (a :class:`Namespace`, mapping or key).
    """
    if isinstance(value, Namespace):
        items = dict(value.items)
    elif isinstance(value, str):
        items = DEFAULT_SCHEMA._split_key(value)
    elif isinstance(value, Mapping):
        items = dict(value)
    else:
        raise NamespaceError(f"a namespace is a Namespace, a mapping or a key; got {type(value).__name__}")
    if not items or not all(isinstance(k, str) for k in items):
        raise NamespaceError(f"malformed namespace {value!r}")
    keys = tuple(sorted(items))
    return NamespaceSchema(keys).parse({k: items[k] for k in keys}).key
