"""The cross-fitted headline (dcjax.privacy.headline): split, draws, choice on the opposite cell."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dcjax.privacy import headline, masks

M, N = 8, 200


def _natural() -> np.ndarray:
    natural = np.ones(N, bool)
    natural[:10] = False  # Canaries: never in a cell.
    return natural


def test_the_split_halves_models_and_natural_examples_by_key():
    split = headline.draw_split(jax.random.key(0), M, _natural())
    assert (split.group == 0).sum() == M // 2 and set(split.group) == {0, 1}
    assert (split.half[:10] == -1).all() and (split.half == 0).sum() == 95 and (split.half == 1).sum() == 95
    again = headline.draw_split(jax.random.key(0), M, _natural())
    assert np.array_equal(split.group, again.group) and np.array_equal(split.half, again.half)
    cells = split.cell_masks()
    assert len(cells) == 4 and (sum(c.astype(int) for c in cells) == np.broadcast_to(_natural(), (M, N))).all()
    with pytest.raises(ValueError, match="2 models"):
        headline.draw_split(jax.random.key(0), 1, _natural())


def test_draws_stay_within_their_half_and_group_and_start_with_the_identity():
    split = headline.draw_split(jax.random.key(0), M, _natural())
    res = headline.draw_resamples(jax.random.key(1), split, 30)
    assert res.examples.shape == (31, 190) and res.models.shape == (31, M)
    assert np.array_equal(res.examples[0], np.flatnonzero(_natural())) and np.array_equal(res.models[0], np.arange(M))
    # Each draw takes exactly as many examples from a half (and models from a group) as it holds.
    assert ((split.half[res.examples] == 0).sum(1) == 95).all()
    assert ((split.group[res.models] == 0).sum(1) == M // 2).all()
    assert len({tuple(r) for r in res.examples[1:]}) == 30


def _samples(values: dict[str, list[float]]) -> dict:
    """{attack: {metric: [4, 1]}} with the given TPRs at 0.1 % per cell and a flat AUC."""
    return {a: {"tpr_at_0.001": np.array(v)[:, None], "auc": np.full((4, 1), 0.5)} for a, v in values.items()}


def test_each_cell_takes_the_attack_that_won_on_the_opposite_cell():
    # a wins only on cell 0, b only on cell 3; c on cells 1 and 2.
    chosen = headline.choose(_samples({"a": [0.9, 0, 0, 0], "b": [0, 0, 0, 0.9], "c": [0, 0.5, 0.5, 0]}))
    assert chosen[:, 0].tolist() == [1, 2, 2, 0]  # Cell 0 <- cell 3's winner (b); cell 3 <- cell 0's (a).


def test_the_choice_for_a_cell_never_reads_that_cells_labels():
    rng = np.random.default_rng(0)
    keep = masks.lira_keep_masks(jax.random.key(2), M, N)
    split = headline.draw_split(jax.random.key(0), M, _natural())
    res = headline.draw_resamples(jax.random.key(1), split, 5)
    scores = {f"a{i}": rng.normal(size=(M, N)) + i * 0.3 * keep for i in range(4)}
    base = headline.headline(scores, keep, split, res)["attack_by_cell"]
    # Flip every label inside cell (0, 0): only the choice of the opposite cell (1, 1) may change.
    cell = split.cell_masks()[0]
    flipped = np.where(cell, ~keep, keep)
    scores_flipped = {**scores, "a0": scores["a0"] + 5.0 * (flipped & cell)}  # a0 now wins cell (0, 0) outright.
    after = headline.headline(scores_flipped, flipped, split, res)["attack_by_cell"]
    assert after["group1_half1"] == "a0" and base["group1_half1"] != "a0"
    assert {k: v for k, v in after.items() if k != "group1_half1"} == {
        k: v for k, v in base.items() if k != "group1_half1"
    }


def test_the_headline_reports_both_bootstraps_and_their_union():
    rng = np.random.default_rng(3)
    keep = masks.lira_keep_masks(jax.random.key(2), M, N)
    split = headline.draw_split(jax.random.key(0), M, _natural())
    res = headline.draw_resamples(jax.random.key(1), split, 40)
    h = headline.headline({"x": rng.normal(size=(M, N)) + keep}, keep, split, res)
    ex, tw = h["tpr_at_0.01_ci_examples"], h["tpr_at_0.01_ci_two_way"]
    assert h["tpr_at_0.01_ci_low"] == min(ex[0], tw[0]) and h["tpr_at_0.01_ci_high"] == max(ex[1], tw[1])
    assert len(h["samples"]) == 40 and h["tpr_at_0.001"] is None  # ~380 non-members a cell: below the floor.
    assert headline.excludes(h, 0.0, "tpr_at_0.01") and not headline.excludes(h, h["tpr_at_0.01"], "tpr_at_0.01")
