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
    """{attack: {metric: [4, 1]}} with the given TPRs at 0.1 % per cell, and flat TPRs at 1 % and AUCs."""
    flat = np.full((4, 1), 0.5)
    return {a: {"tpr_at_0.001": np.array(v)[:, None], "tpr_at_0.01": flat, "auc": flat} for a, v in values.items()}


def test_each_cell_takes_the_attack_that_won_on_the_opposite_cell():
    # a wins only on cell 0, b only on cell 3; c on cells 1 and 2.
    chosen = headline.choose(_samples({"a": [0.9, 0, 0, 0], "b": [0, 0, 0, 0.9], "c": [0, 0.5, 0.5, 0]}))
    assert chosen[:, 0].tolist() == [1, 2, 2, 0]  # Cell 0 <- cell 3's winner (b); cell 3 <- cell 0's (a).


def test_ties_go_to_the_higher_tpr_at_1_percent_then_auc_then_the_earlier_attack():
    samples = _samples({"a": [0.5] * 4, "b": [0.5] * 4, "c": [0.5] * 4, "d": [0.1] * 4})
    samples["b"]["tpr_at_0.01"] = np.full((4, 1), 0.7)  # b beats a and c at 1 % FPR ...
    samples["c"]["tpr_at_0.01"] = np.full((4, 1), 0.7)
    samples["a"]["auc"] = np.full((4, 1), 0.9)  # ... though a has the higher AUC.
    samples["d"]["tpr_at_0.01"] = samples["d"]["auc"] = np.full((4, 1), 1.0)  # d loses at 0.1 %: never chosen.
    assert headline.choose(samples)[:, 0].tolist() == [1, 1, 1, 1]  # b: tied with c on both TPRs, earlier.
    samples["c"]["auc"] = np.full((4, 1), 0.6)
    assert headline.choose(samples)[:, 0].tolist() == [2, 2, 2, 2]  # c: the higher AUC breaks the b-c tie.


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


def _full_headline_choice(scores: dict, keep: np.ndarray, split, res, two_way: bool):
    """The reference: every attack's every metric from the full weighted ROC of every draw, then ``choose``."""
    samples = {n: headline.cell_samples(s, keep, split, res, two_way) for n, s in scores.items()}
    return samples, headline.choose(samples)


@pytest.mark.parametrize("two_way", [False, True])
def test_lazy_samples_choose_and_report_as_the_full_weighted_rocs_do(two_way):
    # Ties everywhere: rounded scores, an exact copy (identical attacks) and a rescaled copy (same order, so the
    # same TPRs, but a distinct attack whose tie is broken by AUC then order).
    rng = np.random.default_rng(3)
    keep = masks.lira_keep_masks(jax.random.key(2), M, N)
    base = np.round(rng.normal(size=(M, N)) + 0.4 * keep, 1)
    scores = {"a": base, "copy": base.copy(), "scaled": 2 * base, "noise": np.round(rng.normal(size=(M, N)), 0)}
    split = headline.draw_split(jax.random.key(0), M, _natural())
    res = headline.draw_resamples(jax.random.key(1), split, 40)
    full, chosen_full = _full_headline_choice(scores, keep, split, res, two_way)
    lazy, chosen = headline._samples(scores, headline._Cells(keep, split, res, two_way), with_auc=True)
    np.testing.assert_array_equal(chosen, chosen_full)
    names, cells, draws = list(scores), np.arange(4)[:, None], np.arange(chosen.shape[1])[None]
    for metric in ("tpr_at_0.01", "tpr_at_0.001", "tpr_at_0.0001", "auc"):
        pick = [np.stack([s[n][metric] for n in names])[chosen, cells, draws] for s in (lazy, full)]
        np.testing.assert_array_equal(*pick)


def test_attacks_that_rank_the_trials_alike_form_one_group():
    # LOSS and confidence order trials identically (a monotone transform): one group, one set of statistics.
    rng = np.random.default_rng(4)
    x = np.round(rng.normal(size=(M, N)), 2)
    scores = {"a": x, "monotone": 2 * np.exp(x) + 1, "reversed": -x, "coarser": np.round(x, 0), "same": x.copy()}
    assert headline.identical_groups(scores) == [0, 0, 2, 3, 0]
