"""Observation regimes (docs/methods.md §1.2–1.4) and the validation split (1.3): golden values."""

from __future__ import annotations

import numpy as np
import pytest
from mlpl.schemas.errors import InputError
from mlpl.stages.prepare.observations import parse_regime, partial, single_positive, single_positive_unlabeled
from mlpl.stages.prepare.writer import validation_split

# A hand-made label matrix: rows with several, none, one and all positives.
Y = np.array(
    [[1, 1, 0, 0, 1], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [1, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 1, 0, 1]],
    dtype=np.uint8,
)


def test_single_positive_golden():
    # Following docs/methods.md §1.2 with RandomState(1200): row 0 shuffles pos [0,1,4] → [0,4,1] and neg [2,3] → [3,2];
    # row 1 has no positive (nothing consumed) and shuffles its 5 negatives; row 2 has one positive
    # (nothing consumed); row 3 → [0,3,2]; row 4 → [0,3,4,1,2] (no negatives); row 5 → [2,4].
    obs = single_positive(Y)
    expected_pos = [[0], [], [1], [0], [0], [2]]
    for row, exp in zip(obs, expected_pos):
        assert np.flatnonzero(row == 1).tolist() == exp
    assert not (obs == -1).any()  # single positive observes no negative
    assert ((obs == 1) <= (Y == 1)).all()


def test_single_positive_negative_shuffle_matters():
    # Skipping the negative shuffle gives other positives from row 3 on: [0,-,1,2,3,2].
    rng = np.random.RandomState(1200)
    skipped = []
    for y in Y:
        pos = np.nonzero(y == 1)[0]
        rng.shuffle(pos)
        skipped.append(pos[:1].tolist())
    assert skipped == [[0], [], [1], [2], [3], [2]]
    assert [np.flatnonzero(r == 1).tolist() for r in single_positive(Y)] != skipped


def test_partial_matches_global_seed_procedure():
    np.random.seed(0)  # the reference procedure, literally
    mask = np.random.random(Y.shape) < 0.5
    expected = np.where(mask, np.where(Y == 1, 1, -1), 0)
    got = partial(Y, 0.5)
    np.testing.assert_array_equal(got, expected)
    # pinned: row 0 keeps only class 4 (+1); row 3 keeps class 0 (+1) and 1 (−1)
    assert got[0].tolist() == [0, 0, 0, 0, 1] and got[3].tolist() == [1, -1, 0, 0, 0]


def test_partial_extremes():
    assert (partial(Y, 0.0) == 0).all()
    np.testing.assert_array_equal(partial(Y, 1.0), np.where(Y == 1, 1, -1))


def test_unlabeled_fraction():
    obs = single_positive_unlabeled(Y, 0.5, seed=0)
    labelled = (obs != 0).any(axis=1)
    # RandomState(0).permutation(6)[:3] = [5, 2, 1] lose their label; rows 1 had none anyway
    assert np.random.RandomState(0).permutation(6)[:3].tolist() == [5, 2, 1]
    assert labelled.tolist() == [True, False, False, True, True, False]
    np.testing.assert_array_equal(obs[labelled], single_positive(Y)[labelled])


def test_validation_split_golden():
    # RandomState(1200).permutation(10) ends with [3, 7]; n_val = round(0.2·10) = 2
    train, val = validation_split(10)
    assert val.tolist() == [3, 7]
    assert train.tolist() == [0, 1, 2, 4, 5, 6, 8, 9]
    train, val = validation_split(7)  # n_val = int(round(1.4)) = 1
    assert len(val) == 1 and len(train) == 6 and val.tolist() == [3]


@pytest.mark.parametrize(
    "spec, name, params",
    [
        ("spml", "spml", {"seed": 1200}),
        ("spml-seed7", "spml", {"seed": 7}),
        ("partial-0.3", "partial", {"ratio": 0.3, "seed": 0}),
        ("partial-0.7-seed2", "partial", {"ratio": 0.7, "seed": 2}),
        ("spml-unlabeled-0.5", "spml-unlabeled", {"unlabeled": 0.5, "seed": 0}),
        ("none", "none", {}),
        ("full", "full", {}),
    ],
)
def test_parse_regime(spec, name, params):
    info, got = parse_regime(spec)
    assert info.name == name and got == params


@pytest.mark.parametrize("spec", ["partial", "partial-1.5", "spml-", "bogus", "spml-unlabeled"])
def test_parse_regime_rejects(spec):
    with pytest.raises(InputError, match="--regime"):
        parse_regime(spec)
