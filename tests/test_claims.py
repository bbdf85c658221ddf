"""Claim extraction and query-time claim conflict (guarded_retriever.detect.claims)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from guarded_retriever.detect.claims import (
    DATE_SLOTS,
    SLOTS,
    conflict_scores,
    conflict_strength,
    extract_claims,
)


def test_extracts_birth_date_year_and_place() -> None:
    c = extract_claims("Thomas Piketty was born on May 7, 1971, in Clichy, France. He is an economist.")
    assert c["birth_date"] == {"1971-05-07"}
    assert c["birth_year"] == {"1971"}
    assert c["birth_place"] == {"clichy"}


def test_day_month_order_and_ordinals_normalise_alike() -> None:
    a = extract_claims("Piketty is a French economist born on 7 May 1971.")
    b = extract_claims("Piketty was born on May 7th, 1971 in Clichy.")
    assert a["birth_date"] == b["birth_date"] == {"1971-05-07"}


def test_month_year_and_later_place() -> None:
    c = extract_claims("Shawn Ashmore was born in October 1979 in Richmond, British Columbia.")
    assert c["birth_year"] == {"1979"}
    assert c["birth_place"] == {"richmond"}
    assert "birth_date" not in c


def test_death_clause_does_not_leak_into_birth() -> None:
    c = extract_claims("Born in Queens, he passed away at the age of 45 on March 23, 2016, in Oakland.")
    assert "birth_date" not in c
    assert c["death_date"] == {"2016-03-23"}


def test_date_just_before_trigger_and_lifespan() -> None:
    c = extract_claims("He was celebrated on May 13, 1979, as his date of birth.")
    assert c["birth_date"] == {"1979-05-13"}
    c = extract_claims("Ada Lovelace (December 10, 1815 – November 27, 1852) was a mathematician.")
    assert c["birth_date"] == {"1815-12-10"}
    assert c["death_date"] == {"1852-11-27"}


def test_no_claims_without_triggers() -> None:
    assert extract_claims("The store opened on May 7, 1971 and sold tea.") == {}
    assert extract_claims("") == {}


def _pool(dates: Sequence[str | None]) -> list[dict[str, frozenset[str]]]:
    return [{"birth_date": frozenset({d})} if d else {} for d in dates]


def test_lone_contradicted_candidate_scores_its_support() -> None:
    pool = _pool(["1971-05-07"] * 4 + ["1971-01-11", None])
    assert conflict_scores(pool) == [0, 0, 0, 0, 4, 0]


def test_corroborated_values_and_thin_consensus_do_not_score() -> None:
    # two passages agreeing with each other are not contradicted by three others
    pool = _pool(["1971-05-07"] * 3 + ["1971-01-11"] * 2)
    assert conflict_scores(pool) == [0] * 5
    # a single other passage is not a consensus
    assert conflict_scores(_pool(["1971-05-07", "1971-01-11"])) == [0, 0]
    # a candidate stating the consensus value among others is not contradicted
    pool = [{"birth_date": frozenset({"1971-05-07", "1971-01-11"})}, *_pool(["1971-05-07"] * 3)]
    assert conflict_scores(pool) == [0, 0, 0, 0]


def test_peers_are_limited_by_vector_cosine() -> None:
    # candidates 0-2 are about one subject; candidate 3 (another person) is far from them
    pool = _pool(["1971-05-07"] * 3 + ["1950-02-02"])
    vecs = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    assert conflict_scores(pool) == [0, 0, 0, 3]
    assert conflict_scores(pool, vecs, peer_cosine=0.5) == [0, 0, 0, 0]
    vecs[3] = [1, 0]
    assert conflict_scores(pool, vecs, peer_cosine=0.5) == [0, 0, 0, 3]


def test_slots_default_to_dates() -> None:
    assert set(DATE_SLOTS) <= set(SLOTS)
    pool = [{"birth_place": frozenset({"lyon"})}] + [{"birth_place": frozenset({"clichy"})}] * 3
    assert conflict_scores(pool) == [0, 0, 0, 0]
    assert conflict_scores(pool, slots=SLOTS) == [3, 0, 0, 0]


def test_strength_mapping() -> None:
    assert conflict_strength(0) == 0.0
    assert conflict_strength(1) == 0.0
    assert 0.0 < conflict_strength(2) < conflict_strength(3) < 1.0
    assert conflict_strength(4) == conflict_strength(40) == 1.0
