"""The ingest guard's fast paths give exactly what the plain definitions they short-cut give.

Each test states the definition (a slower pattern, a one-by-one loop) and checks the fast path
against it, or checks the property that makes a pre-filter exact: whatever the full regex can
match passes the cheap test first.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guarded_retriever as gr
from guarded_retriever import _canonical, _poison
from guarded_retriever._simhash_index import SimhashIndex, near_pairs
from guarded_retriever.detect import _views, injection

# -- canonical text ------------------------------------------------------------------------------

_WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u2028\u2029\u202f\u3000"


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from(_WHITESPACE + "ab\u00e9\u200b\x00") | st.characters(codec="utf-8"),
               max_size=40))
def test_collapse_whitespace_is_split_and_join(text):
    assert _canonical.collapse_whitespace(text) == " ".join(text.split())


_NON_STARTERS = [chr(c) for lo, hi in _canonical._SPANS for c in (lo, (lo + hi) // 2, hi)]
_DEFINITION_CLASS = "".join(f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in _canonical._SPANS)
_CAP_DEFINITION = re.compile(f"([{_DEFINITION_CLASS}]{{{_canonical.MAX_COMBINING_RUN}}})[{_DEFINITION_CLASS}]+")


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(_NON_STARTERS) | st.sampled_from("a \u00e9\u2019\U0001d400\u4e2d"), max_size=120))
def test_capping_runs_of_marks_matches_the_plain_pattern(chars):
    text = "".join(chars)
    assert _canonical._cap_runs(text) == _CAP_DEFINITION.sub(r"\1", text)


def test_capping_long_runs_of_bmp_and_astral_marks():
    rng = random.Random(7)
    for _ in range(2000):
        run = "".join(rng.choice(_NON_STARTERS) for _ in range(rng.choice([29, 30, 31, 32, 61, 200])))
        text = rng.choice(["", "a", "\U0001d400"]) + run + rng.choice(["", "b", " "]) + run[:rng.randint(0, 40)]
        assert _canonical._cap_runs(text) == _CAP_DEFINITION.sub(r"\1", text)


# -- the skeleton and the injection detector's hashing -------------------------------------------

_LEET_DEFINITION = re.compile(r"[a-z][013457@$!|]|[013457@$!|][a-z]")


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="az013457@$!|2 .\nA\u00e9", max_size=12))
def test_the_leet_hint_matches_the_texts_of_its_definition(text):
    assert bool(_views._LEET_HINT.search(text)) == bool(_LEET_DEFINITION.search(text))


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ09+/= -\u00e9\u20ac\n") | st.characters(codec="utf-8"), max_size=60))
def test_every_base64_blob_passes_the_byte_table_check(text):
    if _views._BLOB.search(text):
        assert _views._BASE64_RUN in text.encode("utf-8").translate(_views._BASE64_RUN_TABLE)


def test_the_character_class_table_follows_its_definition():
    ascii_word = [chr(i).isalnum() or chr(i) == "_" for i in range(128)]
    for code in [*range(0x10000), 0x10000, 0x1F600, 0x10FFFF]:
        word = ascii_word[code] if code < 128 else not any(lo <= code <= hi for lo, hi in injection._NON_WORD_RANGES)
        flags = injection._CLASS[min(code, 0xFFFF)]
        assert bool(flags & injection._WORD_CHAR) == word
        assert bool(flags & injection._BREAK_AFTER) == (chr(code) in "\n。！？；")
        assert bool(flags & injection._SENTENCE_END) == (chr(code) in ".!?;")


# -- poison features: the literal and character pre-filters ---------------------------------------

_SEPARATORS = [" ", " ", " ", "", ", ", ": ", "  ", "\n", "."]


def _phrases(words: list[str], n: int = 20000) -> list[str]:
    """Random phrases of ``words``: seeded, and dense in matches of the pattern they are made for."""
    rng = random.Random(len(words))
    return ["".join(rng.choice(words) + rng.choice(_SEPARATORS) for _ in range(rng.randint(1, 9)))
            for _ in range(n)]


_OVERRIDE_WORDS = (
    "ignore disregard forget override bypass previous prior above all system initial instructions instruction "
    "prompt prompts rules told messages new task : reveal print show leak the developer mode do anything now "
    "you are dan in god an a unrestricted unfiltered from on will must act as jailbroken x"
).split()
_DIRECTIVE_WORDS = (
    "in to into within of for with your answer response reply output summary code message s 's solution following "
    "block snippet excerpt respond only using by when while after answering responding replying summarizing "
    "summarising tell inform ask the user reader assistant ai chatbot model llm must should as a an large language "
    "append prepend insert this x"
).split()
_CODE_WORDS = (
    "subprocess os system popen execv exec eval socket curl wget powershell base64 b64decode __import__ requests "
    "get post put paho mqtt publish single smtplib ftplib urllib request http client environ psutil getpass httpx "
    "aiohttp urllib3 xsmtplib sendmail smtp smtp_ssl _ssl . ( | sh bash x ev al"
).split()


@pytest.mark.parametrize(("pattern", "literals", "words"), [
    (_poison._OVERRIDE, _poison._OVERRIDE_LITERALS, _OVERRIDE_WORDS),
    (_poison._DIRECTIVE, _poison._DIRECTIVE_LITERALS, _DIRECTIVE_WORDS),
    (_poison._CODE, _poison._CODE_LITERALS, _CODE_WORDS),
], ids=["override", "directive", "code"])
def test_every_phrase_match_contains_one_of_the_literals(pattern, literals, words):
    matched = [text for text in _phrases(words) if pattern.search(text)]
    assert len(matched) > 200  # the phrases do exercise the pattern
    assert all(_poison._mentions(text, literals) for text in matched)


_MARKUP_WORDS = [
    "display", "DISPLAY", "di\u017fplay", "visibility", "v\u0131s\u0131b\u0131l\u0131ty", "font-size", "FONT-SIZE",
    "opacity", "color", "coloR", "none", "NONE", "hidden", "0", "0.00", ";", "}", "'", "white", "#fff", "#FFFFFF",
    ":", "\u3000", "<", "<!--", "script", "SCRIPT", "\u212a", "\u0130", "x",
]


def test_every_markup_match_passes_the_css_property_check():
    matched = [text for text in _phrases(_MARKUP_WORDS) if _poison._MARKUP.search(text)]
    assert len(matched) > 200
    assert all("<" in text or (":" in text and _poison._CSS_PROPERTY.search(text)) for text in matched)


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=30))
def test_every_hidden_text_scan_hit_is_a_candidate(text):
    hit = _poison._INVISIBLE.search(text) or _poison._TAG_CHARS.search(text) or _poison._GREEK_CYRILLIC.search(text)
    if hit:
        assert _poison._HIDDEN_CANDIDATE.search(text)


# -- near-duplicates ---------------------------------------------------------------------------------


def _fingerprints(rng: random.Random, n: int) -> list[int]:
    """Random fingerprints, copies and near copies (a few bits flipped) of a few bases."""
    bases = [rng.getrandbits(64) for _ in range(rng.choice([1, 2, 5, n]))]
    out = []
    for _ in range(n):
        h = rng.choice(bases)
        for bit in rng.sample(range(64), rng.choice([0, 0, 1, 2, 3, 4, 5, 20])):
            h ^= 1 << bit
        out.append(h)
    return out


def _burst_definition(existing: SimhashIndex, ids: list[str], hashes: list[int], distance: int) -> list[float]:
    """Each document's burst strength from an index of the batch, document by document."""
    batch = SimhashIndex(distance)
    for doc_id, h in zip(ids, hashes, strict=True):
        batch.add(doc_id, h)
    out = []
    for doc_id, h in zip(ids, hashes, strict=True):
        near = batch.near(h, exclude=doc_id) | existing.near(h, exclude=doc_id)
        out.append(min(1.0, max(0, len(near) - 1) / 4))
    return out


@pytest.mark.parametrize("distance", [0, 1, 3])
def test_near_pairs_and_the_burst_match_a_simhash_index(distance):
    rng = random.Random(distance)
    pipeline = gr.IngestPipeline(config=gr.GuardConfig(near_duplicate_distance=distance))
    for _ in range(150):
        n = rng.choice([1, 2, 7, 60, 250])
        hashes = _fingerprints(rng, n)
        ids = [f"d{i}" for i in rng.sample(range(10 * n), n)]
        index = SimhashIndex(distance)
        for i, h in enumerate(hashes):
            index.add(str(i), h)
        pairs = near_pairs(np.array(hashes, dtype=np.uint64), distance)
        assert {i: pairs.get(i, set()) for i in range(n)} == {
            i: {int(j) for j in index.near(h, exclude=str(i))} for i, h in enumerate(hashes)}
        # The namespace holds near copies too, some under ids the batch re-ingests.
        existing = SimhashIndex(distance)
        for h in _fingerprints(rng, rng.choice([0, 3, 30])):
            existing.add(rng.choice([*ids, f"old{rng.randrange(99)}"]), h)
        fast = pipeline._burst_locked(existing, ids, np.array(hashes, dtype=np.uint64))
        assert fast.tolist() == _burst_definition(existing, ids, hashes, distance)


def test_add_many_leaves_the_index_add_leaves():
    rng = random.Random(3)
    for ids in (["a", "b", "c", "d"], ["a", "b", "a", "c"]):  # a repeated id: the later pair wins
        hashes = _fingerprints(rng, len(ids))
        one, many = SimhashIndex(3), SimhashIndex(3)
        for index in (one, many):
            index.add("b", 12345)  # an id the batch replaces
            index.add("z", hashes[0])
        for doc_id, h in zip(ids, hashes, strict=True):
            one.add(doc_id, h)
        many.add_many(ids, hashes)
        assert one._hashes == many._hashes
        assert one._bands == many._bands
