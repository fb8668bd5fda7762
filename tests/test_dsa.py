"""Tests for the Differentiable Siamese Augmentation ops (dcjax.dsa)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcjax import dsa

OP_NAMES = dsa.OPS
IMAGE_MODE = dsa.DSAParams(param_mode="image")


def _op(name):
    return getattr(dsa, name)


@pytest.fixture(scope="module")
def gray():
    return jax.random.normal(jax.random.PRNGKey(0), (4, 12, 12, 1), jnp.float32)


@pytest.fixture(scope="module")
def rgb():
    return jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 3), jnp.float32)


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("mode", ["batch", "image"])
@pytest.mark.slow
def test_op_preserves_shape_dtype_and_is_finite(name, mode, gray, rgb):
    params = dsa.DSAParams(param_mode=mode)
    for x in (gray, rgb):
        out = _op(name)(jax.random.PRNGKey(2), x, params)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.slow
def test_op_is_differentiable(name, rgb):
    grad = jax.grad(lambda x: jnp.sum(_op(name)(jax.random.PRNGKey(3), x, IMAGE_MODE) ** 2))(rgb)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0


@pytest.mark.parametrize("strategy", [dsa.STRATEGY_DIGITS, dsa.STRATEGY_DEFAULT])
@pytest.mark.slow
def test_full_strategy_grad_under_jit(strategy, gray):
    loss = lambda x: jnp.sum(dsa.dsa_augment(jax.random.PRNGKey(4), x, strategy) ** 2)
    grad = jax.jit(jax.grad(loss))(gray)
    assert grad.shape == gray.shape
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0


@pytest.mark.parametrize("strategy", [dsa.STRATEGY_DIGITS, dsa.STRATEGY_DEFAULT])
@pytest.mark.slow
def test_batch_mode_siamese_across_batch_sizes(strategy, gray):
    key = jax.random.PRNGKey(5)
    whole = dsa.dsa_augment(key, gray, strategy)
    np.testing.assert_allclose(whole[:2], dsa.dsa_augment(key, gray[:2], strategy), atol=1e-5)
    np.testing.assert_allclose(whole[2:], dsa.dsa_augment(key, gray[2:], strategy), atol=1e-5)
    # One shared draw: the same image in every slot comes out the same everywhere.
    same = jnp.broadcast_to(gray[:1], gray.shape)
    out = dsa.dsa_augment(key, same, strategy)
    np.testing.assert_allclose(out, jnp.broadcast_to(out[:1], out.shape), atol=1e-5)


def test_image_mode_siamese_same_size_batches(gray):
    # All geometric ops are linear in the pixels, so a shared per-image transform T gives T(a + b) = T(a) + T(b).
    strategy = "crop_cutout_flip_scale_rotate"
    a, b = gray, jax.random.normal(jax.random.PRNGKey(6), gray.shape)
    aug = lambda x: dsa.dsa_augment(jax.random.PRNGKey(7), x, strategy, IMAGE_MODE)
    np.testing.assert_allclose(aug(a + b), aug(a) + aug(b), atol=1e-4)


def test_image_mode_determinism_and_per_image_draws(gray):
    key = jax.random.PRNGKey(8)
    out = dsa.dsa_augment(key, gray, dsa.STRATEGY_DEFAULT, IMAGE_MODE)
    np.testing.assert_array_equal(out, dsa.dsa_augment(key, gray, dsa.STRATEGY_DEFAULT, IMAGE_MODE))
    other = dsa.dsa_augment(jax.random.PRNGKey(9), gray, dsa.STRATEGY_DEFAULT, IMAGE_MODE)
    assert not np.allclose(out, other)
    # Per-image draws: identical inputs get different transforms.
    same = jnp.broadcast_to(gray[:1], gray.shape)
    per_image = dsa.dsa_augment(key, same, dsa.STRATEGY_DEFAULT, IMAGE_MODE)
    assert not np.allclose(per_image[0], per_image[1])


def test_batch_mode_determinism_per_key(rgb):
    out = dsa.dsa_augment(jax.random.PRNGKey(10), rgb, dsa.STRATEGY_DEFAULT)
    np.testing.assert_array_equal(out, dsa.dsa_augment(jax.random.PRNGKey(10), rgb, dsa.STRATEGY_DEFAULT))
    assert not np.allclose(out, dsa.dsa_augment(jax.random.PRNGKey(11), rgb, dsa.STRATEGY_DEFAULT))


def test_zero_range_geometric_ops_are_identity(gray):
    params = dsa.DSAParams(scale=1.0, rotate_degrees=0.0, crop=0.0, param_mode="image")
    for name in ("scale", "rotate", "crop"):
        np.testing.assert_allclose(_op(name)(jax.random.PRNGKey(12), gray, params), gray, atol=1e-5)


def test_zero_range_color_is_identity_on_gray(gray):
    # Saturation is a no-op on one channel; brightness and contrast ranges of 0 leave the rest unchanged.
    params = dsa.DSAParams(brightness=0.0, contrast=0.0)
    np.testing.assert_allclose(dsa.color(jax.random.PRNGKey(13), gray, params), gray, atol=1e-5)


def test_zero_saturation_gives_grey_pixels(rgb):
    params = dsa.DSAParams(brightness=0.0, saturation=0.0, contrast=0.0)
    out = np.asarray(dsa.color(jax.random.PRNGKey(13), rgb, params))
    np.testing.assert_allclose(out, np.broadcast_to(rgb.mean(axis=3, keepdims=True), rgb.shape), atol=1e-5)


def test_flip_twice_is_identity_and_flips_horizontally(gray):
    key = jax.random.PRNGKey(14)
    once = dsa.flip(key, gray, IMAGE_MODE)
    np.testing.assert_array_equal(dsa.flip(key, once, IMAGE_MODE), gray)
    for i in range(gray.shape[0]):
        assert np.array_equal(once[i], gray[i]) or np.array_equal(once[i], gray[i, :, ::-1])


def test_crop_is_integer_shift_with_zero_padding(gray):
    out = np.asarray(dsa.crop(jax.random.PRNGKey(15), gray, IMAGE_MODE))
    x = np.asarray(gray)
    s = int(12 * 0.125 + 0.5)
    for i in range(x.shape[0]):
        matches = []
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                ref = np.zeros_like(x[i])
                ref[max(dy, 0) : 12 + min(dy, 0), max(dx, 0) : 12 + min(dx, 0)] = x[
                    i, max(-dy, 0) : 12 - max(dy, 0), max(-dx, 0) : 12 - max(dx, 0)
                ]
                matches.append(np.array_equal(out[i], ref))
        assert any(matches)


def test_cutout_zeroes_clipped_square():
    ones = jnp.ones((16, 12, 12, 1), jnp.float32)
    out = np.asarray(dsa.cutout(jax.random.PRNGKey(16), ones, IMAGE_MODE))
    side = int(12 * 0.5 + 0.5)
    for img in out[..., 0]:
        rows, cols = np.nonzero(img == 0)
        assert rows.size > 0
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert rows.size == h * w  # one axis-aligned box
        assert side - side // 2 <= h <= side and side - side // 2 <= w <= side
    # Away from the border the box is exactly side x side.
    mask = dsa._cutout_mask(jnp.array([[6, 6]]), side, side, 12, 12)
    assert int((mask == 0).sum()) == side * side


@pytest.mark.slow
def test_affine_sampler_quarter_turn_matches_rot90():
    # The rotation matrix at 90 degrees on a square grid is an exact pixel permutation (no interpolation).
    x = jax.random.normal(jax.random.PRNGKey(17), (1, 7, 7, 2))
    out = dsa._affine_sample(x, jnp.array([[[0.0, 1.0], [-1.0, 0.0]]]))
    assert any(np.allclose(out[0], np.rot90(x[0], k, axes=(0, 1)), atol=1e-5) for k in (1, 3))


def test_scale_matches_reference_direction():
    # Factor 2 on a centre-fixed grid reads source x = 2 * out x: the centre pixel stays, the edges read outside.
    x = jnp.arange(25.0).reshape(1, 5, 5, 1)
    out = dsa._affine_sample(x, jnp.array([[[2.0, 0.0], [0.0, 2.0]]]))
    assert float(out[0, 2, 2, 0]) == pytest.approx(12.0)
    assert float(out[0, 0, 0, 0]) == 0.0


def test_parse_strategy():
    assert dsa.parse_strategy("color_crop") == ("color", "crop")
    assert dsa.parse_strategy("none") == () and dsa.parse_strategy("") == ()
    assert dsa.parse_strategy(dsa.STRATEGY_DEFAULT) == ("color", "crop", "cutout", "flip", "scale", "rotate")
    assert "flip" not in dsa.parse_strategy(dsa.STRATEGY_DIGITS)
    with pytest.raises(ValueError, match="blur"):
        dsa.parse_strategy("color_blur")


def test_none_strategy_is_identity(gray):
    np.testing.assert_array_equal(dsa.dsa_augment(jax.random.PRNGKey(19), gray, "none"), gray)


@pytest.mark.parametrize(
    "field,value",
    [
        ("scale", 0.9),
        ("rotate_degrees", -1.0),
        ("crop", 1.0),
        ("crop", -0.1),
        ("cutout", 1.5),
        ("brightness", -0.1),
        ("saturation", -1.0),
        ("contrast", 1.5),
        ("scale", float("nan")),
        ("param_mode", "pixel"),
        ("select", "some"),
    ],
)
def test_params_validation(field, value):
    with pytest.raises(ValueError, match=field):
        dsa.DSAParams(**{field: value})


def test_params_defaults_and_hashable():
    params = dsa.DSAParams()
    assert (params.scale, params.rotate_degrees, params.crop, params.cutout) == (1.2, 15.0, 0.125, 0.5)
    assert params.param_mode == "batch"
    assert hash(params) == hash(dataclasses.replace(params))


def test_select_one_applies_exactly_one_op_group_drawn_from_the_key(gray):
    """The reference's aug_mode 'S': each call is ONE op of the strategy, with that op's own key fold_in(key, i)."""
    strategy = "crop_cutout_flip"
    names = dsa.parse_strategy(strategy)
    chosen = set()
    for seed in range(12):
        key = jax.random.PRNGKey(100 + seed)
        out = dsa.dsa_augment(key, gray, strategy)
        singles = [_op(name)(jax.random.fold_in(key, i), gray, dsa.DSAParams()) for i, name in enumerate(names)]
        matches = [i for i, single in enumerate(singles) if np.array_equal(out, single)]
        assert len(matches) >= 1, seed
        chosen.add(matches[0])
        # Siamese: a second batch with the same key gets the same op (and, in batch mode, the same parameters).
        np.testing.assert_array_equal(dsa.dsa_augment(key, gray[:2], strategy), singles[matches[0]][:2])
    assert chosen == set(range(len(names)))  # Every op group gets drawn.


def test_select_all_composes_every_op_in_order(gray):
    key = jax.random.PRNGKey(31)
    params = dsa.DSAParams(select="all")
    want = dsa.cutout(jax.random.fold_in(key, 1), dsa.crop(jax.random.fold_in(key, 0), gray, params), params)
    np.testing.assert_array_equal(dsa.dsa_augment(key, gray, "crop_cutout", params), want)


def test_training_augment_draws_per_image_and_is_one_object_per_strategy(gray):
    aug = dsa.training_augment(dsa.STRATEGY_DIGITS)
    assert aug is dsa.training_augment(dsa.STRATEGY_DIGITS)  # Stable identity: a static jit argument.
    same = jnp.broadcast_to(gray[:1], gray.shape)
    out = aug(jax.random.PRNGKey(32), same)
    assert not np.allclose(out[0], out[1])  # Per-image parameters.
    assert dsa.strategy_for("mnist") == dsa.STRATEGY_DIGITS and dsa.strategy_for("cifar10") == dsa.STRATEGY_DEFAULT
