"""Near-duplicate filter: the LSH banding follows --near-threshold, so pairs just above it are caught and pairs well below it are kept."""

from __future__ import annotations

import random

import pytest

from hybridembed.data.instructions import Pair
from hybridembed.data.pair_filters import FilterSettings, MinHasher, _near_duplicate_filter, filter_pairs, lsh_params

N_PAIRS = 150
PREFIX = 300  # shared characters of the two texts of a pair


def _random_text(rng: random.Random, n: int) -> str:
    # CJK ideographs: a 20,000-letter alphabet, so a text's 5-grams are distinct and unrelated texts share none.
    return "".join(chr(0x4E00 + rng.randrange(20000)) for _ in range(n))


def _jaccard(hasher: MinHasher, a: str, b: str) -> float:
    x, y = hasher.shingles(a), hasher.shingles(b)
    return len(x & y) / len(x | y)


def _pairs_with_jaccard(target: float, rng: random.Random, hasher: MinHasher) -> list[tuple[str, str, float]]:
    """Texts X+Y and X+Z (|Y| = |Z| = m): Jaccard of their 5-gram sets = (|X| − 4) / (|X| + 2m − 4)."""
    m = max(1, round(((PREFIX - 4) / target - PREFIX + 4) / 2))
    out = []
    for _ in range(N_PAIRS):
        shared = _random_text(rng, PREFIX)
        a, b = shared + _random_text(rng, m), shared + _random_text(rng, m)
        out.append((a, b, _jaccard(hasher, a, b)))
    return out


def _caught(threshold: float, jaccard: float, seed: int) -> tuple[float, float]:
    """Share of pairs flagged as near duplicates, and their mean true Jaccard."""
    settings = FilterSettings(near_threshold=threshold)
    hasher = MinHasher(settings.num_perm, settings.seed)
    pairs = _pairs_with_jaccard(jaccard, random.Random(seed), hasher)
    seen = _near_duplicate_filter(settings)  # one index for all pairs: unrelated texts never collide
    caught = 0
    for a, b, _ in pairs:
        assert not seen(a)
        caught += seen(b)
    return caught / len(pairs), sum(j for *_, j in pairs) / len(pairs)


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_near_duplicates_just_above_the_threshold_are_caught(threshold):
    target = min(threshold + 0.08, 0.97)
    recall, mean_jaccard = _caught(threshold, target, seed=1)
    assert threshold + 0.05 <= mean_jaccard <= threshold + 0.1  # the pairs really are just above the threshold
    assert recall >= 0.9, f"threshold {threshold}: only {recall:.0%} of pairs at Jaccard {mean_jaccard:.2f} caught"


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_pairs_well_below_the_threshold_are_kept(threshold):
    flagged, mean_jaccard = _caught(threshold, threshold - 0.2, seed=2)
    assert mean_jaccard <= threshold - 0.15
    assert flagged <= 0.05


def test_banding_follows_the_threshold():
    params = {t: lsh_params(t, 128) for t in (0.5, 0.7, 0.9)}
    for bands, rows in params.values():
        assert bands * rows <= 128
    rows = [r for _, r in params.values()]
    assert rows == sorted(rows) and len(set(rows)) == 3  # a higher threshold → longer bands
    # candidate probability at the threshold itself is high (it used to be 6% at 0.5 with fixed 16×8)
    for t, (b, r) in params.items():
        assert 1 - (1 - t**r) ** b >= 0.8


def test_filter_pairs_drops_near_duplicate_pairs_at_a_low_threshold():
    rng = random.Random(3)
    hasher = MinHasher(128, 0)
    pairs = []
    for i, (a, b, _) in enumerate(_pairs_with_jaccard(0.6, rng, hasher)[:40]):
        pairs += [Pair(query=a[:20], positive=a[20:], line=2 * i + 1), Pair(query=b[:20], positive=b[20:], line=2 * i + 2)]
    kept, report = filter_pairs(pairs, FilterSettings(near_threshold=0.5, max_response_chars=10_000))
    assert report.removed["near duplicate"] >= 36
    assert len(kept) == report.kept == len(pairs) - report.removed["near duplicate"]
