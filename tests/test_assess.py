"""The reported numbers of a run (dcjax.privacy.assess) on hand-made exports and scores."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dcjax.privacy import assess, attack_data, masks, metrics

M, N, C = 8, 400, 40  # Models, pool examples, canaries (the first C examples).


def _export(used_fraction: float | None = None) -> attack_data.AttackData:
    keep = masks.lira_keep_masks(jax.random.key(0), M, N)
    used = keep.copy()
    if used_fraction is not None:  # A subset-like recipe: only some members are used as pixels.
        draw = np.asarray(jax.random.uniform(jax.random.key(1), (M, N))) < used_fraction
        used = keep & draw
    return attack_data.AttackData(
        config={"recipe": {"kind": "original" if used_fraction is None else "subset"}},
        preprocessing={},
        pool_indices={},
        num_classes=10,
        target_phi=np.zeros((M, 1, N), np.float32),
        population_phi=np.zeros((M, 1, 0), np.float32),
        correct=np.zeros((M, N), bool),
        shokri_target_logits=np.zeros((M, N, 10), np.float32),
        shokri_shadow_logits=np.zeros((2, 4, 10), np.float32),
        keep=keep,
        halves=np.zeros((2, 4), bool),
        target_labels=np.zeros(N, np.int32),
        attacker_labels=np.zeros(4, np.int32),
        population_labels=np.zeros(0, np.int32),
        canaries=np.arange(C),
        used=used,
        nearest_distances=np.zeros((0, N)),
        synthetic_example=np.zeros((0,), np.float32),
        test_accuracy=np.full(M + 2, 0.9),
        seconds=np.ones(M + 2),
    )


def _scores(d, canary_signal: float, natural_signal: float, key: int) -> np.ndarray:
    noise = np.asarray(jax.random.normal(jax.random.key(key), (M, N)), np.float64)
    signal = np.where(d.natural(), natural_signal, canary_signal)
    return noise + signal * d.keep


def _keys():
    return attack_data.run_keys(0)


@pytest.mark.slow
def test_the_headline_slice_leaves_the_canaries_out():
    d = _export()
    # Canaries are perfectly separable, natural examples not at all.
    scores = {"loss": _scores(d, canary_signal=50.0, natural_signal=0.0, key=2)}
    out = assess.assess(scores, d, _keys(), num_resamples=50)
    natural, everything = out["attacks"]["loss"]["natural"], out["attacks"]["loss"]["all"]
    assert natural["num_members"] == (N - C) * M // 2
    assert abs(natural["auc"] - 0.5) < 0.05 and everything["auc"] > 0.54  # Canaries would inflate it.
    assert out["attacks"]["loss"]["canaries"]["auc"] == 1.0
    detected = out["canary_detection"]["loss"]
    assert detected["members"] == C * M // 2 and detected["detected"] == detected["members"]
    assert detected["false_positives"] <= 2


def test_the_headline_attack_is_cross_fitted_and_named():
    d = _export()
    scores = {
        "weak": _scores(d, 0.0, 0.5, key=3),
        "strong": _scores(d, 0.0, 3.0, key=4),
        "nearest_synthetic": _scores(d, 0.0, 0.0, key=5),  # A release attack: never a model headline.
    }
    out = assess.assess(scores, d, _keys(), num_resamples=60)
    best = out["headline"]["model"]
    assert best["attack"] == "strong" and set(best["attack_by_cell"].values()) == {"strong"}
    assert out["headline"]["release"]["attack"] == "nearest_synthetic"
    # One attack in every cell: the headline is the mean of its cell TPRs, not the pooled TPR.
    split, _ = assess.crossfit(d, _keys(), 60)
    cells = [metrics.trial_metrics(scores["strong"], d.keep, m)["tpr_at_0.01"] for m in split.cell_masks()]
    assert best["tpr_at_0.01"] == pytest.approx(np.mean(cells))
    assert best["tpr_at_0.01_ci_low"] <= best["tpr_at_0.01"] <= best["tpr_at_0.01_ci_high"]
    # ~360 non-member trials a cell: 0.1 % FPR is below a cell's floor, so it is not reported.
    assert best["fpr_floor"] > 0.001 and best["tpr_at_0.001"] is None
    # The audit runs on the headline attack: a strong signal on ~360 one-trial examples bounds epsilon above 0.
    assert out["empirical_epsilon"]["strong"]["natural"]["epsilon_lower_bound"] > 0.5
    assert "null_test" not in out  # Only with a rescoring function.


def test_the_null_test_runs_when_given_a_rescoring_function():
    d = _export()
    rescore = lambda keep, used: {"loss": _scores(d, 0.0, 0.0, key=7), "confidence": _scores(d, 0.0, 0.0, key=8)}
    out = assess.assess({"loss": _scores(d, 0.0, 3.0, key=4)}, d, _keys(), num_resamples=30, null_scores=rescore)
    test = out["null_test"]
    assert test["draws"] == 20 and len(test["tpr"]) == 20 and test["passed"]


def test_resamples_are_shared_so_two_exports_pair_up():
    d = _export()
    a = assess.assess({"x": _scores(d, 0, 1.0, key=6)}, d, _keys(), num_resamples=30)
    b = assess.assess({"x": _scores(d, 0, 1.0, key=6) + 1.0}, d, _keys(), num_resamples=30)
    # A constant shift changes no ranking: every paired resample agrees exactly.
    assert a["headline"]["model"]["samples"] == b["headline"]["model"]["samples"]


def test_the_used_slice_exists_only_for_recipes_that_copy_some_members():
    assert "used" not in assess.trial_slices(_export())
    slices = assess.trial_slices(_export(used_fraction=0.2))
    d = _export(used_fraction=0.2)
    members = slices["used"] & d.keep
    assert (members == (d.used & d.natural())).all()
    assert ((slices["used"] & ~d.keep) == (~d.keep & d.natural())).all()  # Every natural non-member.


def test_validate_refuses_inconsistent_exports():
    d = _export()
    bad = attack_data.AttackData(**{**d.__dict__, "used": np.ones((M, N), bool)})
    with pytest.raises(ValueError, match="used"):
        attack_data.validate(bad)
    with pytest.raises(ValueError, match="target_labels"):
        attack_data.validate(attack_data.AttackData(**{**d.__dict__, "target_labels": np.zeros(3)}))


def test_summaries_shared_by_equal_slices_and_alike_attacks_equal_their_own():
    # Without canaries "all" is "natural"; exp(x) ranks every trial as x does: both get copies, which must equal
    # what each would have computed by itself.
    d = _export(used_fraction=0.3)
    d = attack_data.AttackData(**{**d.__dict__, "canaries": np.zeros(0, np.int64)})
    x = np.round(_scores(d, 0.0, 1.0, key=9), 1)  # Ties too.
    scores = {"x": x, "other": _scores(d, 0.0, 0.5, key=10), "exp": np.exp(x)}
    slices = assess.trial_slices(d)
    resamples = metrics.example_resamples(_keys()["bootstrap"], N, 30)
    shared = assess.attack_summaries(scores, d, slices, resamples)
    assert list(shared) == list(scores) and list(shared["exp"]) == ["natural", "all", "used"]
    for name, s in scores.items():
        for slice_name, include in slices.items():
            alone = metrics.summarize_examples(s, d.keep, include, resamples, assess.FPRS)
            assert shared[name][slice_name] == alone, (name, slice_name)
    assert shared["exp"]["natural"] is not shared["x"]["natural"]  # Copies: editing one leaves the other alone.
