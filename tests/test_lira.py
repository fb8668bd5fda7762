"""LiRA / LOSS scores and keep masks on synthetic numbers (pure math, no models)."""

import functools

import jax
import numpy as np
import pytest
import scipy.special

from dcjax.privacy import lira, masks, metrics

ATTACKS = {
    "online_fixed": functools.partial(lira.lira_online, fixed_variance=True),
    "online_per_example": functools.partial(lira.lira_online, fixed_variance=False),
    "offline_fixed": functools.partial(lira.lira_offline, fixed_variance=True),
    "offline_per_example": functools.partial(lira.lira_offline, fixed_variance=False),
}


def test_keep_masks_balanced_and_deterministic():
    keep = masks.lira_keep_masks(jax.random.key(0), 16, 300)
    assert keep.shape == (16, 300) and keep.dtype == bool
    np.testing.assert_array_equal(keep.sum(0), 8)
    # Each model trains on about half the pool.
    assert np.all(np.abs(keep.sum(1) - 150) < 50)
    np.testing.assert_array_equal(keep, masks.lira_keep_masks(jax.random.key(0), 16, 300))
    assert not np.array_equal(keep, masks.lira_keep_masks(jax.random.key(1), 16, 300))
    with pytest.raises(ValueError, match="even"):
        masks.lira_keep_masks(jax.random.key(0), 7, 10)
    with pytest.raises(ValueError, match="even"):
        masks.lira_keep_masks(jax.random.key(0), 0, 10)


def test_half_split_mask():
    for n in (1, 10, 11):
        mask = masks.half_split_mask(jax.random.key(2), n)
        assert mask.shape == (n,) and mask.sum() == n // 2
    np.testing.assert_array_equal(
        masks.half_split_mask(jax.random.key(3), 50), masks.half_split_mask(jax.random.key(3), 50)
    )
    assert not np.array_equal(
        masks.half_split_mask(jax.random.key(3), 50), masks.half_split_mask(jax.random.key(4), 50)
    )


def _normal(seed: int, shape) -> np.ndarray:
    """Standard normals from ``jax.random.key(seed)``: one fixed-size draw, sliced, so jax compiles it only once."""
    pool = np.asarray(jax.random.normal(jax.random.key(seed), (1 << 15,)), np.float64)
    return pool[: int(np.prod(shape))].reshape(shape)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_logit_scale_matches_log_odds():
    logits = _normal(0, (5, 40, 10)) * 3
    labels = np.arange(40) % 10
    p = np.exp(np.take_along_axis(_log_softmax(logits), labels[None, :, None], -1)[..., 0])
    phi = lira.logit_scale(logits, labels)
    assert phi.shape == (5, 40) and phi.dtype == np.float64
    np.testing.assert_allclose(phi, np.log(p / (1 - p)), rtol=1e-10, atol=1e-10)


def test_logit_scale_example_axis():
    logits = _normal(1, (3, 7, 2, 4))  # [M, N, Q, K]
    labels = np.arange(7) % 4
    phi = lira.logit_scale(logits, labels, example_axis=1)
    assert phi.shape == (3, 7, 2)
    for q in range(2):
        np.testing.assert_allclose(phi[:, :, q], lira.logit_scale(logits[:, :, q], labels), rtol=1e-12)
    with pytest.raises(ValueError, match="labels"):
        lira.logit_scale(logits, labels)  # N is not second to last here


def test_logit_scale_extreme_logits():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 3000.0], [-5000.0, 0.0, 0.0]])
    labels = np.array([0, 0, 2, 0])
    phi = lira.logit_scale(logits.astype(np.float32), labels)
    assert np.all(np.isfinite(phi))
    np.testing.assert_allclose(phi, [1e4, -2e4, 3000 - np.log(2), -5000 - np.log(2)], rtol=1e-12)
    assert np.all(np.isfinite(lira.loss_threshold_scores(logits, labels)))


def test_loss_and_confidence_scores():
    logits = _normal(2, (4, 30, 5)) * 2
    labels = np.arange(30) % 5
    log_p = np.take_along_axis(_log_softmax(logits), labels[None, :, None], -1)[..., 0]
    np.testing.assert_allclose(lira.loss_threshold_scores(logits, labels), log_p, rtol=1e-12)
    np.testing.assert_allclose(lira.confidence_scores(logits, labels), np.exp(log_p), rtol=1e-12)


def test_loss_and_confidence_from_phi_match_the_logits_versions():
    logits = np.concatenate([_normal(3, (2, 30, 5)) * 4, np.full((1, 30, 5), 0.0)])
    logits[0, :3] = [[60.0, 0, 0, 0, 0], [-60.0, 0, 0, 0, 0], [800.0, 0, 0, 0, -800.0]]  # Saturated p.
    labels = np.arange(30) % 5
    phi = lira.logit_scale(logits, labels)
    # atol: for p_y ~ 1 the logits' version rounds log p_y to 0; phi keeps -exp(-phi) (asserted below).
    np.testing.assert_allclose(lira.loss_from_phi(phi), lira.loss_threshold_scores(logits, labels), 1e-12, 1e-20)
    np.testing.assert_allclose(lira.confidence_from_phi(phi), lira.confidence_scores(logits, labels), rtol=1e-12)
    assert lira.loss_from_phi(np.float32(-800.0)) == -800.0 and lira.loss_from_phi(40.0) == -np.exp(-40.0)


def test_bad_logits_raise():
    with pytest.raises(ValueError, match="labels"):
        lira.logit_scale(np.zeros((4, 3)), np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="labels"):
        lira.logit_scale(np.zeros((4, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="finite"):
        lira.logit_scale(np.full((2, 3), np.nan), np.array([0, 1]))


def _synthetic(seed: int, shift: float, num_models: int = 16, num_examples: int = 200, num_queries: int = 2):
    """phi [M, N, Q]: per-example difficulty ~ N(0, 3^2), unit noise, IN scores shifted by ``shift`` std."""
    keep = masks.lira_keep_masks(jax.random.key(seed), num_models, num_examples)
    difficulty = 3 * _normal(seed + 100, (num_examples,))
    noise = _normal(seed + 200, (num_models, num_examples, num_queries))
    return difficulty[None, :, None] + shift * keep[..., None] + noise, keep


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_lira_separates_shifted_gaussians(name):
    scores, keep = _synthetic(0, shift=2.0)
    membership, labels = lira.leave_one_out(scores, keep, ATTACKS[name])
    assert membership.shape == (16, 200) and np.all(np.isfinite(membership))
    np.testing.assert_array_equal(labels, keep)
    assert metrics.auc(membership, labels) > 0.9
    # The per-example calibration is the point of LiRA: a global threshold on phi does far worse here.
    assert metrics.auc(scores.mean(-1), keep) < 0.8


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_lira_chance_without_signal(name):
    scores, keep = _synthetic(1, shift=0.0)
    membership, labels = lira.leave_one_out(scores, keep, ATTACKS[name])
    assert metrics.auc(membership, labels) == pytest.approx(0.5, abs=0.05)


def test_fit_gaussians_median_and_pooled_std():
    scores, keep = _synthetic(2, shift=1.0, num_models=8, num_examples=30, num_queries=1)
    fit = lira.fit_gaussians(scores, keep, fixed_variance=True)
    resid, dof = [], 0
    for n in range(30):
        ins = scores[keep[:, n], n, 0]
        assert fit.mu_in[n, 0] == pytest.approx(np.median(ins))
        assert fit.mu_out[n, 0] == pytest.approx(np.median(scores[~keep[:, n], n, 0]))
        resid.append(ins - ins.mean())
        dof += ins.size - 1
    pooled_in = np.sqrt(np.sum(np.concatenate(resid) ** 2) / dof)
    np.testing.assert_allclose(fit.std_in, pooled_in)
    per_example = lira.fit_gaussians(scores, keep, fixed_variance=False)
    np.testing.assert_allclose(
        per_example.std_out[:, 0], [np.std(scores[~keep[:, n], n, 0], ddof=1) for n in range(30)]
    )


def test_target_excluded_from_its_own_shadows():
    scores, keep = _synthetic(3, shift=1.0, num_models=8, num_examples=20, num_queries=1)
    scores[0] += 1e3  # model 0 is a huge outlier: it would wreck any Gaussian fit it entered
    attack = ATTACKS["online_per_example"]
    membership, _ = lira.leave_one_out(scores, keep, attack, equalize=False)
    np.testing.assert_allclose(membership[0], attack(scores[0], scores[1:], keep[1:]))
    assert not np.allclose(membership[0], attack(scores[0], scores, keep))
    np.testing.assert_allclose(membership[3], attack(scores[3], np.delete(scores, 3, 0), np.delete(keep, 3, 0)))


def _record_calls(scores, keep, equalize):
    seen = []

    def recording_attack(target, shadows, shadow_keep):
        seen.append((target, shadows, shadow_keep))
        return np.zeros(target.shape[0])

    lira.leave_one_out(scores, keep, recording_attack, equalize=equalize)
    return seen


def test_leave_one_out_passes_the_other_models():
    scores, keep = _synthetic(3, shift=1.0, num_models=8, num_examples=20, num_queries=2)
    for m, (target, shadows, shadow_keep) in enumerate(_record_calls(scores, keep, equalize=False)):
        np.testing.assert_array_equal(target, scores[m])
        np.testing.assert_array_equal(shadows, np.delete(scores, m, 0))
        np.testing.assert_array_equal(shadow_keep, np.delete(keep, m, 0))
    for m, (target, shadows, shadow_keep) in enumerate(_record_calls(scores, keep, equalize=True)):
        np.testing.assert_array_equal(target, scores[m])
        np.testing.assert_array_equal(shadow_keep, np.delete(keep, m, 0))
        present = ~np.isnan(shadows[..., 0])
        # Whole (model, example) pairs are dropped, all queries together.
        np.testing.assert_array_equal(np.isnan(shadows), np.repeat(~present[..., None], 2, -1))
        np.testing.assert_array_equal(shadows[present], np.delete(scores, m, 0)[present])
        # Equal IN and OUT counts (M/2 - 1) for every example, whatever the target's own membership.
        np.testing.assert_array_equal((present & shadow_keep).sum(0), 3)
        np.testing.assert_array_equal((present & ~shadow_keep).sum(0), 3)


@pytest.mark.parametrize("name", ["online_fixed", "online_per_example"])
def test_equalize_removes_null_bias(name):
    scores, keep = _synthetic(0, shift=0.0, num_examples=1000)
    biased = metrics.auc(*lira.leave_one_out(scores, keep, ATTACKS[name], equalize=False))
    fixed = metrics.auc(*lira.leave_one_out(scores, keep, ATTACKS[name]))
    assert biased < 0.485  # members look less like members when their own set lost a shadow
    assert fixed == pytest.approx(0.5, abs=0.015)


def test_nan_shadow_scores_are_missing():
    scores, keep = _synthetic(6, shift=1.0, num_models=8, num_examples=20, num_queries=2)
    holed = scores.copy()
    holed[2] = np.nan
    holed[5, :, 1] = np.nan  # one NaN query drops the whole (model, example) pair
    dropped = np.delete(scores, [2, 5], 0)
    for attack in ATTACKS.values():
        np.testing.assert_allclose(
            attack(scores[0], holed[1:], keep[1:]), attack(scores[0], dropped[1:], np.delete(keep, [2, 5], 0)[1:])
        )


def test_examples_missing_in_or_out_stay_finite():
    scores, keep = _synthetic(4, shift=2.0, num_models=6, num_examples=10, num_queries=2)
    keep[:, 0] = False  # example 0 never IN
    keep[:, 1] = True  # example 1 never OUT
    for name, attack in ATTACKS.items():
        out = attack(scores[0], scores[1:], keep[1:])
        assert out.shape == (10,) and np.all(np.isfinite(out)), name
    fit = lira.fit_gaussians(scores, keep, fixed_variance=False)
    shift = np.median((fit.mu_in - fit.mu_out)[2:], axis=0)
    np.testing.assert_allclose(fit.mu_in[0], fit.mu_out[0] + shift)
    np.testing.assert_allclose(fit.mu_out[1], fit.mu_in[1] - shift)


def test_single_query_inputs_may_drop_the_query_axis():
    scores, keep = _synthetic(7, shift=1.0, num_models=8, num_examples=20, num_queries=1)
    for attack in ATTACKS.values():
        np.testing.assert_allclose(
            attack(scores[0, :, 0], scores[1:, :, 0], keep[1:]), attack(scores[0], scores[1:], keep[1:])
        )


def test_identical_shadow_scores_give_finite_scores():
    scores = np.ones((4, 5, 1))
    keep = masks.lira_keep_masks(jax.random.key(0), 4, 5)
    for attack in ATTACKS.values():
        assert np.all(np.isfinite(attack(np.full(5, 2.0), scores, keep)))


def test_bad_shadow_inputs_raise():
    scores, keep = _synthetic(5, shift=1.0, num_models=4, num_examples=6, num_queries=1)
    with pytest.raises(ValueError, match="keep shape"):
        lira.lira_online(scores[0], scores, keep[:, :5], fixed_variance=True)
    with pytest.raises(ValueError, match="target scores shape"):
        lira.lira_online(scores[0, :5], scores, keep, fixed_variance=True)
    with pytest.raises(ValueError, match="both IN and OUT"):
        lira.leave_one_out(scores[:2], keep[:2], ATTACKS["online_fixed"])
    with pytest.raises(ValueError, match=">= 2 models"):
        lira.leave_one_out(scores[:1], keep[:1], ATTACKS["online_fixed"])
    with pytest.raises(ValueError, match="finite"):
        lira.leave_one_out(np.where(keep[..., None], np.nan, scores), keep, ATTACKS["online_fixed"])
    with pytest.raises(ValueError, match="inf"):
        lira.lira_online(scores[0], np.full(scores.shape, np.inf), keep, fixed_variance=True)


# ---------------------------------------------------------------- recipe-aware LiRA

PLAIN = {
    "online": functools.partial(lira.lira_online, fixed_variance=True),
    "offline": functools.partial(lira.lira_offline, fixed_variance=True),
}
RECIPE = {"online": lira.lira_recipe_online, "offline": lira.lira_recipe_offline}


def _subset_recipe(
    seed: int,
    shift: float,
    used_fraction: float = 0.2,
    num_models: int = 8,
    num_examples: int = 1000,
    num_queries: int = 2,
):
    """(phi [M, N, Q], keep, used): a subset recipe, each member used as pixels with probability used_fraction;
    only used members shift by ``shift`` std (the in-unused ones are distributed exactly like non-members)."""
    keep = masks.lira_keep_masks(jax.random.key(seed), num_models, num_examples)
    coin = np.asarray(jax.random.uniform(jax.random.key(seed + 50), (1 << 15,)))
    used = keep & (coin[: keep.size].reshape(keep.shape) < used_fraction)
    difficulty = 3 * _normal(seed + 100, (num_examples,))
    noise = _normal(seed + 200, (num_models, num_examples, num_queries))
    return difficulty[None, :, None] + shift * used[..., None] + noise, keep, used


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_recipe_aware_beats_plain_lira_on_a_subset_recipe(mode):
    for seed in (0, 1):
        scores, keep, used = _subset_recipe(seed, shift=3.0)
        assert 0.15 < used.sum() / keep.sum() < 0.25
        recipe = lira.leave_one_out_recipe(scores, keep, used, RECIPE[mode])
        plain, _ = lira.leave_one_out(scores, keep, PLAIN[mode])
        assert recipe.shape == (8, 1000) and np.all(np.isfinite(recipe))
        # About 10% more members found at 1% FPR (the ceiling is ~0.2: only the used members carry signal).
        gain = metrics.tpr_at_fpr(recipe, keep, 0.01) - metrics.tpr_at_fpr(plain, keep, 0.01)
        assert gain > 0.005, (seed, gain)


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_recipe_aware_chance_without_signal(mode):
    scores, keep, used = _subset_recipe(3, shift=0.0, num_models=16, num_examples=300)
    membership = lira.leave_one_out_recipe(scores, keep, used, RECIPE[mode])
    assert metrics.auc(membership, keep) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_recipe_aware_equals_plain_when_every_member_is_used(mode):
    # The 'original' recipe (used == keep): rho = 1 and the not-used null is OUT, so the fixed-variance attacks.
    scores, keep, _ = _subset_recipe(4, shift=1.0, num_models=8, num_examples=40)
    keep[:, 0] = True  # example 0 never OUT, example 1 never IN: the shifted-mean fallbacks agree too
    keep[:, 1] = False
    for m in (0, 5):
        others = np.arange(8) != m
        args = scores[m], scores[others], keep[others]
        np.testing.assert_array_equal(RECIPE[mode](*args, keep[others]), PLAIN[mode](*args))
    if mode == "online":  # rho = 0 (no member used): plain online LiRA on the in-unused group, i.e. on keep
        np.testing.assert_array_equal(RECIPE[mode](*args, np.zeros_like(keep[others])), PLAIN[mode](*args))


def _pooled(scores: np.ndarray, mask: np.ndarray) -> float:
    resid = [scores[mask[:, n], n] - scores[mask[:, n], n].mean() for n in range(scores.shape[1])]
    return np.sqrt(np.sum(np.concatenate(resid) ** 2) / sum(r.size - 1 for r in resid))


def test_recipe_online_mixture_by_hand():
    scores = _normal(5, (9, 5, 1))
    # Per example: models 0-2 used, 3-5 in-unused, 6-8 OUT, rotated so the groups differ between examples.
    group = (np.arange(9)[:, None] + 3 * (np.arange(5) % 3)[None, :]) % 9 // 3  # 0 used, 1 unused, 2 OUT
    keep, used = group < 2, group == 0
    scores = scores + 2.0 * used[..., None]
    target = _normal(6, (5, 1))
    got = lira.lira_recipe_online(target, scores, keep, used)
    s, t = scores[..., 0], target[:, 0]
    rho = used.sum() / keep.sum()
    med = {g: np.array([np.median(s[group[:, n] == g, n]) for n in range(5)]) for g in range(3)}
    std = {g: _pooled(s, group == g) for g in range(3)}
    pdf = {g: np.exp(-0.5 * ((t - med[g]) / std[g]) ** 2) / (std[g] * np.sqrt(2 * np.pi)) for g in range(3)}
    np.testing.assert_allclose(got, np.log(rho * pdf[0] + (1 - rho) * pdf[1]) - np.log(pdf[2]), rtol=1e-10)


def test_recipe_offline_null_by_hand():
    scores, keep, used = _subset_recipe(7, shift=2.0, num_models=10, num_examples=6, num_queries=1)
    scores[keep & ~used] += 0.5  # move the in-unused shadows: the recipe null includes them, the plain one not
    target = _normal(8, (6, 1))
    s, null = scores[..., 0], ~used
    mu = np.array([np.median(s[null[:, n], n]) for n in range(6)])
    expected = scipy.special.log_ndtr((target[:, 0] - mu) / _pooled(s, null))
    np.testing.assert_allclose(lira.lira_recipe_offline(target, scores, keep, used), expected, rtol=1e-10)
    assert not np.allclose(PLAIN["offline"](target, scores, keep), expected)


def test_leave_one_out_recipe_passes_the_other_models():
    scores, keep, used = _subset_recipe(9, shift=1.0, num_models=6, num_examples=20)
    seen = []

    def recording_attack(target, shadows, shadow_keep, shadow_used):
        seen.append((target, shadows, shadow_keep, shadow_used))
        return np.full(target.shape[0], float(len(seen)))

    out = lira.leave_one_out_recipe(scores, keep, used, recording_attack)
    np.testing.assert_array_equal(out, np.repeat(np.arange(1.0, 7.0)[:, None], 20, 1))
    for m, (target, shadows, shadow_keep, shadow_used) in enumerate(seen):
        np.testing.assert_array_equal(target, scores[m])
        np.testing.assert_array_equal(shadow_keep, np.delete(keep, m, 0))
        np.testing.assert_array_equal(shadow_used, np.delete(used, m, 0))
        present = ~np.isnan(shadows[..., 0])
        np.testing.assert_array_equal((present & shadow_keep).sum(0), 2)  # equalised: M/2 - 1 IN and OUT
        np.testing.assert_array_equal((present & ~shadow_keep).sum(0), 2)


def test_recipe_aware_errors():
    scores, keep, used = _subset_recipe(10, shift=1.0, num_models=6, num_examples=10, num_queries=1)
    bad = used.copy()
    bad[~keep] = True
    for attack in RECIPE.values():
        with pytest.raises(ValueError, match="imply keep"):
            attack(scores[0], scores[1:], keep[1:], bad[1:])
        with pytest.raises(ValueError, match="used shape"):
            attack(scores[0], scores[1:], keep[1:], used[1:, :5])
        with pytest.raises(ValueError, match="target scores shape"):
            attack(scores[0, :5], scores[1:], keep[1:], used[1:])
    with pytest.raises(ValueError, match="imply keep"):
        lira.leave_one_out_recipe(scores, keep, bad, lira.lira_recipe_online)
    with pytest.raises(ValueError, match=">= 2 models"):
        lira.leave_one_out_recipe(scores[:1], keep[:1], used[:1], lira.lira_recipe_online)
    with pytest.raises(ValueError, match="IN shadow"):
        lira.lira_recipe_online(scores[0], scores[1:], np.zeros_like(keep[1:]), np.zeros_like(used[1:]))


@pytest.mark.parametrize("equalize", [True, False])
@pytest.mark.parametrize("queries", [1, 2])
def test_the_four_variants_in_one_pass_equal_four_leave_one_out_runs_bitwise(equalize, queries):
    # Uneven IN counts, examples never IN or never OUT (the shifted-mean and population fallbacks), one example
    # whose scores are all equal (the std floor): every branch the shared statistics feed.
    rng = np.random.default_rng(7)
    m, n = 8, 300
    keep = masks.lira_keep_masks(jax.random.key(3), m, n)
    keep[:3, 8:10] = False  # Uneven IN counts: the equalised shadow counts are the smallest ones.
    keep[:, :4], keep[:, 4:7] = False, True
    scores = rng.normal(size=(m, n, queries)) + 1.5 * keep[..., None]
    scores[:, 7] = 0.25
    together = lira.leave_one_out_lira(scores, keep, equalize=equalize)
    for name, fixed in (("online", False), ("online", True), ("offline", False), ("offline", True)):
        fn = functools.partial(getattr(lira, f"lira_{name}"), fixed_variance=fixed)
        alone = lira.leave_one_out(scores, keep, fn, equalize=equalize)[0]
        key = f"lira_{name}" + ("_fixed_var" if fixed else "")
        assert together[key].tobytes() == alone.tobytes(), key
    assert list(together) == list(lira.LIRA_VARIANTS)
    with pytest.raises(ValueError, match=">= 2 models"):
        lira.leave_one_out_lira(scores[:1], keep[:1])
