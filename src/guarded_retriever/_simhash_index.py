"""Near-duplicate look-up over simhash-64 fingerprints.

Four 16-bit bands: two fingerprints within Hamming distance 3 differ in at most 3 bands, so by the
pigeonhole principle they agree exactly on at least one band and a band look-up finds every pair.
Candidates found through a band are then checked for their true distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from ._fingerprint import hamming

__all__ = ["SimhashIndex", "near_pairs"]

_BANDS = 4
_BAND_BITS = 16
_BAND_MASK = (1 << _BAND_BITS) - 1


def _band_values(simhash: int) -> tuple[int, int, int, int]:
    """The four 16-bit bands of a fingerprint, lowest first (written out: this runs per document)."""
    return (simhash & _BAND_MASK, (simhash >> 16) & _BAND_MASK, (simhash >> 32) & _BAND_MASK,
            (simhash >> 48) & _BAND_MASK)


class SimhashIndex:
    """Maps each band's 16-bit value to the ids whose fingerprint has it (one dict per band)."""

    __slots__ = ("_bands", "_hashes", "max_distance")

    def __init__(self, max_distance: int = 3) -> None:
        if not 0 <= max_distance < _BANDS:
            raise ValueError(f"max_distance must be in [0, {_BANDS - 1}] for {_BANDS} bands")
        self.max_distance = max_distance
        self._bands: tuple[dict[int, set[str]], ...] = tuple({} for _ in range(_BANDS))
        self._hashes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._hashes)

    def add(self, doc_id: str, simhash: int) -> None:
        if doc_id in self._hashes:
            self.discard(doc_id)
        self._hashes[doc_id] = simhash
        for band, value in zip(self._bands, _band_values(simhash), strict=True):
            ids = band.get(value)
            if ids is None:
                band[value] = {doc_id}
            else:
                ids.add(doc_id)

    def add_many(self, doc_ids: Sequence[str], simhashes: Sequence[int]) -> None:
        """:meth:`add` for each pair; band by band, in about two thirds of the time."""
        if len(set(doc_ids)) < len(doc_ids):  # a later pair replaces an earlier one: add() does that
            for doc_id, simhash in zip(doc_ids, simhashes, strict=True):
                self.add(doc_id, simhash)
            return
        hashes = self._hashes
        for doc_id in doc_ids:
            if doc_id in hashes:
                self.discard(doc_id)
        hashes.update(zip(doc_ids, simhashes, strict=True))
        for k, band in enumerate(self._bands):
            shift = k * _BAND_BITS
            for doc_id, simhash in zip(doc_ids, simhashes, strict=True):
                value = (simhash >> shift) & _BAND_MASK
                ids = band.get(value)
                if ids is None:
                    band[value] = {doc_id}
                else:
                    ids.add(doc_id)

    def discard(self, doc_id: str) -> None:
        old = self._hashes.pop(doc_id, None)
        if old is None:
            return
        for band, value in zip(self._bands, _band_values(old), strict=True):
            ids = band.get(value)
            if ids is not None:
                ids.discard(doc_id)
                if not ids:
                    del band[value]

    def near(self, simhash: int, *, exclude: str | None = None) -> set[str]:
        """Ids whose fingerprint is within ``max_distance`` bits of ``simhash``."""
        found: set[str] = set()
        for band, value in zip(self._bands, _band_values(simhash), strict=True):
            ids = band.get(value)
            if ids:
                found |= ids
        if not found:
            return found
        found.discard(exclude)
        return {i for i in found if hamming(self._hashes[i], simhash) <= self.max_distance}


def near_pairs(simhashes: np.ndarray, max_distance: int) -> dict[int, set[int]]:
    """Within one array of fingerprints: for each position that has any, the other positions
    within ``max_distance`` bits (what a :class:`SimhashIndex` of them would answer).

    The same bands, vectorised: positions that share a band value are found by sorting each band,
    and only those candidates (few in a batch of distinct texts) are checked one by one.
    """
    if not 0 <= max_distance < _BANDS:
        raise ValueError(f"max_distance must be in [0, {_BANDS - 1}] for {_BANDS} bands")
    values = simhashes.tolist()
    out: dict[int, set[int]] = {}
    for k in range(_BANDS):
        band = (simhashes >> np.uint64(k * _BAND_BITS)) & np.uint64(_BAND_MASK)
        order = np.argsort(band, kind="stable")
        ordered = band[order]
        same = ordered[1:] == ordered[:-1]
        if not same.any():
            continue
        group = np.concatenate(([0], np.cumsum(~same)))  # run of equal values, per sorted position
        shared = np.bincount(group)[group] > 1
        members: dict[int, list[int]] = {}
        for g, i in zip(group[shared].tolist(), order[shared].tolist(), strict=True):
            members.setdefault(g, []).append(i)
        for run in members.values():
            for i, j in combinations(run, 2):
                if j in out.get(i, ()):
                    continue  # found through an earlier band (copies share all four)
                if hamming(values[i], values[j]) <= max_distance:
                    out.setdefault(i, set()).add(j)
                    out.setdefault(j, set()).add(i)
    return out
