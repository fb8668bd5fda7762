"""Membership-inference metrics against brute-force definitions (pure NumPy math, no models)."""

import functools
import json

import jax
import numpy as np
import pytest

from dcjax.privacy import metrics


def _normal(seed: int, n: int) -> np.ndarray:
    """n standard normals from ``jax.random.key(seed)``: one fixed-size draw, sliced, so jax compiles it once."""
    return np.asarray(jax.random.normal(jax.random.key(seed), (1 << 15,)), np.float64)[:n]


def _tied_data(seed: int, n: int = 300):
    """Scores on a coarse grid (many ties), members shifted up a little; about 40% members (labels 0/1 ints)."""
    labels = (_normal(seed + 100, n) < -0.25).astype(int)
    scores = np.round(_normal(seed, n) * 2 + labels) / 2
    return scores, labels


def _brute_points(scores, labels):
    """(fpr, tpr) at +inf and every distinct score, high to low, predicting member when score >= t."""
    thresholds = np.r_[np.inf, np.unique(scores)[::-1]]
    pos, neg = scores[labels == 1], scores[labels == 0]
    tpr = np.array([(pos >= t).mean() for t in thresholds])
    fpr = np.array([(neg >= t).mean() for t in thresholds])
    return fpr, tpr, thresholds


def _brute_auc(scores, labels):
    """Mann-Whitney: P(member > non-member) + P(tie) / 2 over all pairs."""
    diff = scores[labels == 1][:, None] - scores[labels == 0][None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_bacc_tpr_match_brute_force(seed):
    scores, labels = _tied_data(seed)
    assert len(np.unique(scores)) < len(scores) // 3  # the data really has ties
    fpr, tpr, thr = metrics.roc_curve(scores, labels)
    b_fpr, b_tpr, b_thr = _brute_points(scores, labels)
    np.testing.assert_allclose(fpr, b_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, b_tpr, atol=1e-12)
    np.testing.assert_array_equal(thr, b_thr)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert metrics.auc(scores, labels) == pytest.approx(_brute_auc(scores, labels), abs=1e-12)
    assert metrics.balanced_accuracy(scores, labels) == pytest.approx(np.max(1 - (b_fpr + 1 - b_tpr) / 2))
    for target in (0.0, 0.01, 0.05, 0.3, 1.0):
        expected = np.max(b_tpr[b_fpr <= target + 1e-12])
        assert metrics.tpr_at_fpr(scores, labels, target) == pytest.approx(expected)


def test_tpr_at_zero_fpr_is_above_every_nonmember():
    scores = np.array([5.0, 4.0, 4.0, 3.0, 2.0, 1.0])
    labels = np.array([1, 1, 0, 1, 0, 0])
    # Only 5.0 is strictly above every non-member (the member at 4.0 ties a non-member).
    assert metrics.tpr_at_fpr(scores, labels, 0.0) == pytest.approx(1 / 3)
    assert metrics.tpr_at_fpr(scores, labels, 1 / 3) == pytest.approx(1.0)


def test_perfect_separation():
    scores = np.r_[np.arange(10.0) + 100, np.arange(20.0)]
    labels = np.r_[np.ones(10, int), np.zeros(20, int)]
    assert metrics.auc(scores, labels) == 1.0
    assert metrics.tpr_at_fpr(scores, labels, 0.0) == 1.0
    assert metrics.balanced_accuracy(scores, labels) == 1.0
    # Reversed scores: the attack is perfectly wrong.
    assert metrics.auc(-scores, labels) == 0.0


def test_identical_distributions_give_chance():
    n = 20000
    scores = _normal(3, n)
    labels = _normal(103, n) > 0
    assert metrics.auc(scores, labels) == pytest.approx(0.5, abs=0.02)
    assert metrics.balanced_accuracy(scores, labels) < 0.53


def test_all_tied_scores():
    scores = np.zeros(8)
    labels = np.array([0, 1] * 4)
    fpr, tpr, _ = metrics.roc_curve(scores, labels)
    np.testing.assert_array_equal(fpr, [0, 1])
    np.testing.assert_array_equal(tpr, [0, 1])
    assert metrics.auc(scores, labels) == 0.5
    assert metrics.tpr_at_fpr(scores, labels, 0.5) == 0.0


def test_accepts_2d_trials_and_bool_labels():
    scores, labels = _tied_data(4, n=200)
    expected = metrics.auc(scores, labels)
    assert metrics.auc(scores.reshape(10, 20), labels.reshape(10, 20).astype(bool)) == pytest.approx(expected)


def test_fpr_floor():
    assert metrics.fpr_floor(np.array([1, 0, 0, 0, 1])) == pytest.approx(1 / 3)
    assert metrics.fpr_floor(np.zeros(1000, int)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="no non-members"):
        metrics.fpr_floor(np.ones(4, int))


def _shifted(seed: int, n: int, shift: float = 1.0):
    labels = np.arange(n) % 2
    scores = _normal(seed, n) + shift * labels
    return scores, labels


@pytest.mark.slow
def test_bootstrap_ci_contains_estimate_deterministic_and_narrows():
    key = jax.random.key(7)
    small, large = _shifted(0, 100), _shifted(1, 2000)
    for fn in (metrics.auc, metrics.balanced_accuracy):
        low, high = metrics.bootstrap_ci(fn, *small, key)
        assert low <= fn(*small) <= high
        assert (low, high) == metrics.bootstrap_ci(fn, *small, key)
        low_l, high_l = metrics.bootstrap_ci(fn, *large, key)
        assert low_l <= fn(*large) <= high_l
        assert high_l - low_l < (high - low) / 2
    other = metrics.bootstrap_ci(metrics.auc, *small, jax.random.key(8))
    assert other != metrics.bootstrap_ci(metrics.auc, *small, key)
    tpr_fn = functools.partial(metrics.tpr_at_fpr, fpr_target=0.1)
    low, high = metrics.bootstrap_ci(tpr_fn, *large, key, num_resamples=50, level=0.9)
    assert 0.0 <= low <= high <= 1.0


def test_summarize_json_friendly():
    scores, labels = _shifted(2, 1000)
    out = metrics.summarize(scores, labels, jax.random.key(0), num_resamples=50)
    json.dumps(out)  # must not raise
    for name in ("auc", "balanced_accuracy", "tpr_at_0", "tpr_at_0.001", "tpr_at_0.01"):
        assert type(out[name]) is float and type(out[f"{name}_ci_low"]) is float
        assert 0.0 <= out[f"{name}_ci_low"] <= out[f"{name}_ci_high"] <= 1.0
    # Percentile CIs of smooth metrics cover the point estimate (tpr at a tiny FPR is a max, so not always).
    for name in ("auc", "balanced_accuracy"):
        assert out[f"{name}_ci_low"] <= out[name] <= out[f"{name}_ci_high"]
    assert out["auc"] == pytest.approx(metrics.auc(scores, labels))
    assert out["tpr_at_0.01"] == pytest.approx(metrics.tpr_at_fpr(scores, labels, 0.01))
    assert out["num_members"] == 500 and out["num_nonmembers"] == 500
    assert type(out["num_members"]) is int
    assert out["fpr_floor"] == pytest.approx(1 / 500)


def test_log_log_roc_points():
    scores, labels = _shifted(5, 400)
    fpr, tpr = metrics.log_log_roc_points(scores, labels, floor=1e-4)
    assert fpr.min() >= 1e-4 and tpr.min() >= 1e-4
    assert fpr[0] == 1e-4 and fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


@pytest.mark.parametrize(
    "fn",
    [metrics.auc, metrics.balanced_accuracy, metrics.roc_curve, functools.partial(metrics.tpr_at_fpr, fpr_target=0.01)],
)
def test_bad_inputs_raise(fn):
    with pytest.raises(ValueError, match="shape"):
        fn(np.zeros(5), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="labels must be 0"):
        fn(np.zeros(4), np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="no members"):
        fn(np.arange(4.0), np.zeros(4, int))
    with pytest.raises(ValueError, match="no non-members"):
        fn(np.arange(4.0), np.ones(4, int))
    with pytest.raises(ValueError, match="finite"):
        fn(np.array([0.0, np.nan, 1.0, 2.0]), np.array([0, 1, 0, 1]))


def test_bad_parameters_raise():
    scores, labels = _shifted(6, 20)
    with pytest.raises(ValueError, match="fpr_target"):
        metrics.tpr_at_fpr(scores, labels, 1.5)
    with pytest.raises(ValueError, match="level"):
        metrics.bootstrap_ci(metrics.auc, scores, labels, jax.random.key(0), level=1.0)
    with pytest.raises(ValueError, match="num_resamples"):
        metrics.bootstrap_ci(metrics.auc, scores, labels, jax.random.key(0), num_resamples=0)
    with pytest.raises(ValueError, match="no members"):
        metrics.summarize(scores, np.zeros(20, int), jax.random.key(0))


# ---------------------------------------------------------------------------------------------------------------
# [M, N] trial matrices: example-level bootstrap, paired differences, thresholds, canaries.


def _trial_matrix(seed: int, num_models: int = 8, num_examples: int = 60, shift: float = 1.0, grid: bool = False):
    """scores float64 [M, N], keep bool [M, N] with every example IN for exactly M / 2 models (jax-keyed)."""
    size = num_models * num_examples
    rank = np.argsort(_normal(seed + 500, size).reshape(num_models, num_examples), axis=0)
    keep = np.argsort(rank, axis=0) < num_models // 2
    scores = _normal(seed, size).reshape(num_models, num_examples) + shift * keep
    return (np.round(scores * 2) / 2 if grid else scores), keep


def test_example_resamples_deterministic_in_key(monkeypatch):
    res = metrics.example_resamples(jax.random.key(0), 30, 7)
    assert res.shape == (7, 30) and res.dtype == np.int64
    assert res.min() >= 0 and res.max() < 30
    assert any(np.unique(row).size < 30 for row in res)  # drawn with replacement
    np.testing.assert_array_equal(res, metrics.example_resamples(jax.random.key(0), 30, 7))
    assert not np.array_equal(res, metrics.example_resamples(jax.random.key(1), 30, 7))
    monkeypatch.setattr(metrics, "_CHUNK_DRAWS", 50)  # 1 resample per chunk: still deterministic, right shape
    chunked = metrics.example_resamples(jax.random.key(0), 30, 7)
    assert chunked.shape == (7, 30)
    np.testing.assert_array_equal(chunked, metrics.example_resamples(jax.random.key(0), 30, 7))
    with pytest.raises(ValueError, match="num_resamples"):
        metrics.example_resamples(jax.random.key(0), 30, 0)


def test_trial_metrics_match_flat_functions_on_the_included_trials():
    scores, keep = _trial_matrix(0, grid=True)
    include = np.ones_like(keep)
    include[:, :10] = False  # e.g. canary columns left out
    include[0, 20:] = False
    out = metrics.trial_metrics(scores, keep, include, fprs=(0.05, 0.001))
    s, y = scores[include], keep[include]
    assert out["auc"] == pytest.approx(metrics.auc(s, y))
    assert out["balanced_accuracy"] == pytest.approx(metrics.balanced_accuracy(s, y))
    assert out["tpr_at_0.05"] == pytest.approx(metrics.tpr_at_fpr(s, y, 0.05))
    assert out["num_members"] == int(y.sum()) and out["num_nonmembers"] == int((~y).sum())
    assert out["fpr_floor"] == pytest.approx(1 / (~y).sum())
    assert out["num_examples"] == 50
    assert out["tpr_at_0.001"] is None  # about 200 non-members: 0.001 is below the floor
    assert metrics.trial_metrics(scores, keep)["auc"] == pytest.approx(metrics.auc(scores, keep))


def test_tpr_below_the_floor_is_none_with_none_cis():
    scores, keep = _trial_matrix(1, num_models=4, num_examples=100)  # 200 non-member trials: floor 0.005
    res = metrics.example_resamples(jax.random.key(0), 100, 20)
    out = metrics.summarize_examples(scores, keep, None, res, fprs=(0.01, 0.005, 0.001))
    assert out["fpr_floor"] == pytest.approx(0.005)
    assert out["tpr_at_0.001"] is None and out["tpr_at_0.001_ci_low"] is None
    assert out["tpr_at_0.001_ci_high"] is None
    assert type(out["tpr_at_0.005"]) is float and type(out["tpr_at_0.005_ci_low"]) is float
    assert type(out["tpr_at_0.01"]) is float


def test_bootstrap_samples_equal_metrics_of_the_duplicated_columns():
    scores, keep = _trial_matrix(2, num_examples=40, grid=True)  # ties
    include = np.ones_like(keep)
    include[:2, :15] = False
    fprs = (0.1, 0.02)
    res = metrics.example_resamples(jax.random.key(3), 40, 5)
    samples = metrics.bootstrap_samples(scores, keep, include, res, fprs)
    assert set(samples) == {"auc", "balanced_accuracy", "tpr_at_0.1", "tpr_at_0.02"}
    for r in range(5):  # resample r is the trial matrix of its drawn columns, duplicates included
        expected = metrics.trial_metrics(scores[:, res[r]], keep[:, res[r]], include[:, res[r]], fprs)
        for name, values in samples.items():
            assert values.shape == (5,)
            assert values[r] == pytest.approx(expected[name], abs=1e-12)
    identity = metrics.bootstrap_samples(scores, keep, include, np.arange(40)[None], fprs)
    point = metrics.trial_metrics(scores, keep, include, fprs)
    assert all(identity[name][0] == pytest.approx(point[name], abs=1e-12) for name in identity)


def test_summarize_examples_json_friendly_and_deterministic():
    scores, keep = _trial_matrix(4, num_examples=80)
    res = metrics.example_resamples(jax.random.key(0), 80, 100)
    out = metrics.summarize_examples(scores, keep, None, res, fprs=(0.01,), level=0.9)
    json.dumps(out)
    assert out["ci_method"] == "example bootstrap" and out["ci_level"] == 0.9 and out["num_resamples"] == 100
    assert out["num_degenerate_resamples"] == 0
    for name in ("auc", "balanced_accuracy"):
        assert out[f"{name}_ci_low"] < out[name] < out[f"{name}_ci_high"]
    assert out["auc"] == pytest.approx(metrics.auc(scores, keep))
    assert out == metrics.summarize_examples(scores, keep, None, res, fprs=(0.01,), level=0.9)


def test_degenerate_resamples_are_left_out_of_the_intervals():
    scores, keep = _trial_matrix(5, num_models=2, num_examples=20)
    include = ~keep
    include[:, 0] = keep[:, 0]  # the only included members are column 0's, without its non-member
    res = np.stack([np.arange(20), np.full(20, 0), np.r_[np.arange(1, 20), 1]])
    samples = metrics.bootstrap_samples(scores, keep, include, res, ())
    assert np.isnan(samples["auc"][1]) and np.isnan(samples["auc"][2])  # no non-member / no member drawn
    assert samples["auc"][0] == pytest.approx(metrics.trial_metrics(scores, keep, include, ())["auc"])
    out = metrics.summarize_examples(scores, keep, include, res, ())
    assert out["num_degenerate_resamples"] == 2
    assert out["auc_ci_low"] == out["auc_ci_high"] == pytest.approx(samples["auc"][0])


def test_summarize_examples_bad_inputs_raise():
    scores, keep = _trial_matrix(6, num_models=4, num_examples=10)
    res = metrics.example_resamples(jax.random.key(0), 10, 4)
    with pytest.raises(ValueError, match="keep shape"):
        metrics.summarize_examples(scores, keep[:, :9], None, res)
    with pytest.raises(ValueError, match="include"):
        metrics.summarize_examples(scores, keep, np.ones((4, 9), bool), res)
    with pytest.raises(ValueError, match="no members"):
        metrics.summarize_examples(scores, keep, ~keep, res)
    with pytest.raises(ValueError, match="no non-members"):
        metrics.summarize_examples(scores, keep, keep, res)
    with pytest.raises(ValueError, match="outside"):
        metrics.summarize_examples(scores, keep, None, res + 5)
    with pytest.raises(ValueError, match="scores must be"):
        metrics.trial_metrics(scores.ravel(), keep.ravel())
    with pytest.raises(ValueError, match="level"):
        metrics.summarize_examples(scores, keep, None, res, level=1.5)


def _correlated_trials(key, reps: int, num_examples: int, num_models: int = 8):
    """Per-example random effects shared by all of an example's trials: float64 scores, bool keep [reps, M, N].

    score = u_n + (mu + v_n) * keep + noise with difficulty u_n ~ N(0, 0.5^2), member shift mu = 1 and
    vulnerability v_n ~ N(0, 1.5^2). Every example is IN for exactly M / 2 models. Note that with this balanced
    design an additive u_n alone does not shrink trial-bootstrap coverage (it affects members and non-members of
    a column alike); the per-example vulnerability v_n is what makes trials of one example move together.
    """
    k_normal, k_keep = jax.random.split(key)
    normal = np.asarray(jax.random.normal(k_normal, (reps, num_models + 2, num_examples)), np.float64)
    u, v, noise = normal[:, :1] * 0.5, normal[:, 1:2] * 1.5, normal[:, 2:]
    rank = np.argsort(np.asarray(jax.random.uniform(k_keep, (reps, num_models, num_examples))), axis=1)
    keep = np.argsort(rank, axis=1) < num_models // 2
    return u + (1.0 + v) * keep + noise, keep


@pytest.mark.slow
def test_example_bootstrap_covers_on_correlated_trials_where_trial_bootstrap_does_not():
    reps, num_examples, num_resamples = 200, 100, 200
    # Population AUC from an independent draw of reps x 100 = 20k examples pooled (160k trials), about 0.678.
    big_s, big_k = _correlated_trials(jax.random.key(0), reps, num_examples)
    truth = metrics.auc(np.moveaxis(big_s, 0, 1), np.moveaxis(big_k, 0, 1))
    scores, keep = _correlated_trials(jax.random.key(1), reps, num_examples)
    # One draw for all replications (one jax call); replication i uses its own block of rows.
    all_res = metrics.example_resamples(jax.random.key(2), num_examples, reps * num_resamples)
    example_cover = []
    for i in range(reps):
        res = all_res[i * num_resamples : (i + 1) * num_resamples]
        out = metrics.summarize_examples(scores[i], keep[i], None, res, fprs=())
        example_cover.append(out["auc_ci_low"] <= truth <= out["auc_ci_high"])
    trial_cover = []
    for i in range(100):  # the old per-trial bootstrap loops in Python: fewer replications keep the test fast
        low, high = metrics.bootstrap_ci(
            metrics.auc, scores[i], keep[i], jax.random.fold_in(jax.random.key(3), i), num_resamples=100
        )
        trial_cover.append(low <= truth <= high)
    assert 0.90 <= np.mean(example_cover) <= 0.99
    assert np.mean(trial_cover) < 0.88
    assert np.mean(example_cover[:100]) - np.mean(trial_cover) > 0.07


def test_paired_difference_identical_rows_and_a_stronger_row():
    weak, keep = _trial_matrix(7, num_examples=80, shift=0.3)
    strong = weak + 0.7 * keep  # same examples, same noise, a clearly stronger signal
    res = metrics.example_resamples(jax.random.key(0), 80, 200)
    sw, ss = (metrics.bootstrap_samples(s, keep, None, res, ()) for s in (weak, strong))
    pw, ps = (metrics.trial_metrics(s, keep, None, ()) for s in (weak, strong))
    same = metrics.paired_difference(sw["auc"], sw["auc"], pw["auc"], pw["auc"])
    assert same["difference"] == 0.0 and same["ci_low"] == 0.0 and same["ci_high"] == 0.0
    assert same["p_two_sided"] == 1.0
    diff = metrics.paired_difference(ss["auc"], sw["auc"], ps["auc"], pw["auc"])
    assert diff["difference"] == pytest.approx(ps["auc"] - pw["auc"]) and diff["difference"] > 0
    assert 0 < diff["ci_low"] <= diff["difference"] <= diff["ci_high"]
    assert diff["p_two_sided"] < 0.01 and diff["num_resamples"] == 200
    reverse = metrics.paired_difference(sw["auc"], ss["auc"], pw["auc"], ps["auc"])
    assert reverse["ci_high"] < 0 and reverse["ci_low"] == pytest.approx(-diff["ci_high"])
    with pytest.raises(ValueError, match="equal length"):
        metrics.paired_difference(ss["auc"], sw["auc"][:10], ps["auc"], pw["auc"])
    with pytest.raises(ValueError, match="None"):
        metrics.paired_difference(ss["auc"], sw["auc"], None, pw["auc"])


def test_threshold_at_fpr():
    scores = np.arange(1.0, 11.0)
    t = metrics.threshold_at_fpr(scores, 0.2)  # two false positives allowed: just above the 3rd largest, 8
    assert 8.0 < t < 8.0 + 1e-12 and np.mean(scores >= t) == 0.2
    assert np.mean(scores >= 8.0) > 0.2  # nothing lower qualifies
    assert metrics.threshold_at_fpr(scores, 0.25) == t  # 2.5 false positives round down
    t0 = metrics.threshold_at_fpr(scores, 0.0)
    assert 10.0 < t0 < 10.0 + 1e-12
    assert metrics.threshold_at_fpr(scores, 0.01) == t0  # below the floor: flags no non-member
    assert metrics.threshold_at_fpr(scores, 1.0) == -np.inf
    assert metrics.threshold_at_fpr(scores, 0.9) == np.nextafter(1.0, 2.0)
    tied = np.array([5.0, 5.0, 5.0, 1.0])
    assert 5.0 < metrics.threshold_at_fpr(tied, 0.5) < 5.0 + 1e-12  # any t <= 5 flags 3 of 4
    with pytest.raises(ValueError, match="fpr"):
        metrics.threshold_at_fpr(scores, -0.1)
    with pytest.raises(ValueError, match="empty"):
        metrics.threshold_at_fpr(np.array([]), 0.1)


def test_canary_detection_hand_computed():
    scores = np.array([[0.1, 0.9, 0.5, 0.3, 2.0, 0.6], [0.8, 0.2, 0.4, 0.7, 0.95, 0.8]])
    keep = np.array([[1, 0, 0, 1, 1, 0], [0, 1, 1, 0, 0, 1]], bool)
    natural = np.zeros_like(keep)
    natural[:, :4] = True
    canaries = np.array([4, 5])
    # Natural non-members: 0.9, 0.8, 0.7, 0.5. FPR 0.25 allows one: threshold just above 0.8.
    out = metrics.canary_detection(scores, keep, natural, canaries, fpr=0.25)
    assert 0.8 < out["threshold"] < 0.8 + 1e-12
    assert (out["detected"], out["members"]) == (1, 2)  # 2.0 detected, 0.8 (a tie) not
    assert (out["false_positives"], out["nonmembers"]) == (1, 2)  # 0.95 flagged, 0.6 not
    assert out["natural_nonmembers"] == 4 and out["natural_fpr"] == 0.25 and out["fpr"] == 0.25
    strict = metrics.canary_detection(scores, keep, None, canaries, fpr=0.001)  # None: all non-canary trials
    assert 0.9 < strict["threshold"] < 0.9 + 1e-12
    assert (strict["detected"], strict["false_positives"]) == (1, 1)
    assert metrics.canary_detection(scores, keep, None, canaries, fpr=0.25) == out
    with pytest.raises(ValueError, match="canary columns"):
        metrics.canary_detection(scores, keep, np.ones_like(keep), canaries)
    with pytest.raises(ValueError, match="canary_cols"):
        metrics.canary_detection(scores, keep, natural, np.array([4, 4]))


def _tied_bank(seed: int, two_way: bool):
    """A 6 x 400 bank with tie runs (rounded scores), a slice mask and 30 draws of examples (and models if
    ``two_way``): (m, n, r, keep, scores, include, res, model_res)."""
    rng = np.random.default_rng(seed)
    m, n, r = 6, 400, 30
    keep = rng.random((m, n)) < 0.5
    scores = np.round(rng.normal(size=(m, n)) + 0.5 * keep, 1)
    include = rng.random((m, n)) < 0.7
    res = rng.integers(0, n, (r, n))
    model_res = rng.integers(0, m, (r, m)) if two_way else None
    return m, n, r, keep, scores, include, res, model_res


@pytest.mark.parametrize("two_way", [False, True])
def test_bootstrap_tprs_equal_bootstrap_samples_bitwise(two_way):
    # Rounded scores make tie runs; a slice mask and a large FPR (the prefix must grow) are covered too.
    m, n, r, keep, scores, include, res, model_res = _tied_bank(5, two_way)
    fprs = (0.3, 0.01, 0.001, 0.0)
    full = metrics.bootstrap_samples(scores, keep, include, res, fprs, model_res)
    weights = metrics.resample_weights(res, n, model_res, m)
    fast = metrics.bootstrap_tprs(scores, keep, include, weights, fprs)
    assert sorted(fast) == sorted(k for k in full if k.startswith("tpr_at_"))
    for name, values in fast.items():
        np.testing.assert_array_equal(values, full[name])
    totals = metrics.weight_totals(weights, keep, include)
    assert np.array_equal(
        fast["tpr_at_0.01"], metrics.bootstrap_tprs(scores, keep, include, weights, fprs, totals)["tpr_at_0.01"]
    )


@pytest.mark.parametrize("two_way", [False, True])
def test_weight_totals_of_several_masks_equal_one_mask_at_a_time(two_way):
    # The headline's cells counted in one product: the same exact integers as the brute-force sums of weights.
    m, n, r, keep, _, include, res, model_res = _tied_bank(7, two_way)
    weights = metrics.resample_weights(res, n, model_res, m)
    masks = [None, include, ~include]
    for mask, (members, nonmembers) in zip(masks, metrics.weight_totals_of(weights, keep, masks)):
        inc = np.ones((m, n), bool) if mask is None else mask
        w = weights.examples[:, None, :] * (1 if model_res is None else weights.models[:, :, None])  # [R, M, N]
        for got, label in ((members, keep & inc), (nonmembers, ~keep & inc)):
            assert got.dtype == np.int64 and np.array_equal(got, np.sum(w * label, axis=(1, 2)))
        assert all(
            np.array_equal(a, b) for a, b in zip((members, nonmembers), metrics.weight_totals(weights, keep, mask))
        )


def _reference_weighted_metrics(w, y, last, fprs) -> dict:
    """``metrics._weighted_metrics`` as first written (concatenated rates, one cumulative sum per label, a mask
    sum per FPR): the restructured one must give the same bits."""
    tp = np.cumsum(w * y, axis=1, dtype=np.int32)[:, last]
    fp = np.cumsum(w * ~y, axis=1, dtype=np.int32)[:, last]
    bad = (tp[:, -1] == 0) | (fp[:, -1] == 0)
    zero = np.zeros((w.shape[0], 1))
    tpr = np.concatenate([zero, tp / np.maximum(tp[:, -1:], 1)], axis=1)
    fpr = np.concatenate([zero, fp / np.maximum(fp[:, -1:], 1)], axis=1)
    out = {
        "auc": np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]), axis=1) / 2,
        "balanced_accuracy": np.max((1 + tpr - fpr) / 2, axis=1),
    }
    for f in fprs:
        out[f"tpr_at_{f:g}"] = tpr[np.arange(w.shape[0]), np.sum(fpr <= f + 1e-12, axis=1) - 1]
    for values in out.values():
        values[bad] = np.nan
    return out


@pytest.mark.parametrize("rows", [1, 3, 4])
@pytest.mark.parametrize("decimals", [1, None])
def test_weighted_metrics_equal_the_straightforward_reference_bitwise(rows, decimals):
    # Weights gathered as bootstrap_samples gathers them (a column-major result) and row-major; with and without
    # tie runs; a copy without non-members (NaN). The AUC's row sums depend on the layout: bits must not move.
    rng = np.random.default_rng(rows)
    t = 5000
    s = -np.sort(-(rng.normal(size=t) if decimals is None else np.round(rng.normal(size=t), decimals)))
    y, last = rng.random(t) < 0.4, np.r_[s[1:] != s[:-1], True]
    counts = rng.poisson(1.0, size=(rows, 800)).astype(np.int32)
    gathered = counts[:, rng.integers(0, 800, t)]
    fprs = (0.3, 0.01, 0.001, 0.0)
    for w in (gathered, np.ascontiguousarray(gathered), np.where(y, gathered, 0).astype(np.int32)):
        got, want = metrics._weighted_metrics(w, y, last, fprs), _reference_weighted_metrics(w, y, last, fprs)
        assert list(got) == list(want)
        for name in want:
            assert got[name].tobytes() == want[name].tobytes(), name
    assert np.isnan(metrics._weighted_metrics(np.where(y, gathered, 0).astype(np.int32), y, last, fprs)["auc"]).all()


def test_trials_sorted_from_one_full_order_equal_a_sort_per_mask():
    rng = np.random.default_rng(6)
    m, n = 5, 300
    keep = rng.random((m, n)) < 0.5
    scores = np.round(rng.normal(size=(m, n)), 1)  # Ties: their row-major order must survive.
    scores[0, 0] = -0.0 if scores[0, 1] == 0 else scores[0, 0]
    order = np.argsort(-scores.ravel(), kind="stable")
    for include in (None, rng.random((m, n)) < 0.3, np.broadcast_to(rng.random(n) < 0.5, (m, n))):
        inc = None if include is None else np.array(include)
        a, b = metrics.sort_trials(scores, keep, inc), metrics.sort_trials(scores, keep, inc, order)
        for field in ("y", "cols", "rows", "last"):
            x, z = getattr(a, field), getattr(b, field)
            assert x.dtype == z.dtype and np.array_equal(x, z), field
    with pytest.raises(ValueError, match="needs both"):
        metrics.sort_trials(scores, np.ones((m, n), bool), None, order)


@pytest.mark.parametrize("two_way", [False, True])
def test_sorted_samples_of_some_draws_equal_bootstrap_samples_of_those_draws_bitwise(two_way):
    # The headline's AUC tie-breaks: a few rows of counts made once, trials sorted once, against the full path.
    m, n, r, keep, scores, include, res, model_res = _tied_bank(8, two_way)
    weights = metrics.resample_weights(res, n, model_res, m)
    trials = metrics.sort_trials(scores, keep, include, np.argsort(-scores.ravel(), kind="stable"))
    for draws in (np.array([4]), np.array([0, 3, 17, 29]), np.arange(r)):
        models = None if model_res is None else model_res[draws]
        want = metrics.bootstrap_samples(scores, keep, include, res[draws], (0.01,), models)
        rows = metrics.ResampleWeights(weights.examples[draws], None if models is None else weights.models[draws])
        got = metrics.sorted_samples(trials, rows, (0.01,))
        assert list(got) == list(want)
        for name in want:
            assert got[name].tobytes() == want[name].tobytes(), name
