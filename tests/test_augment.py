"""Tests for dcjax.augment: the DC evaluation augmentation (crop / scale / rotate) in JAX."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from dcjax import augment
from dcjax import dsa

H = W = 28


def _images(b=8, c=1, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, H, W, c)), jnp.float32)


def _dot_images(b, row, col, value=1.0):
    images = np.zeros((b, H, W, 1), np.float32)
    images[:, row, col, 0] = value
    return jnp.asarray(images)


def _reference_scale(image, fh, fw, fill):
    """NumPy transcription of the reference scalefun (F.interpolate nearest in float32, centred canvas, crop)."""
    h, w = int(fh * H), int(fw * W)
    rows = np.minimum(np.floor(np.arange(h, dtype=np.float32) * np.float32(H / h)).astype(int), H - 1)
    cols = np.minimum(np.floor(np.arange(w, dtype=np.float32) * np.float32(W / w)).astype(int), W - 1)
    side = max(h, w, H, W)
    canvas = np.full((side, side, image.shape[-1]), fill, np.float32)
    r, c = (side - h) // 2, (side - w) // 2
    canvas[r : r + h, c : c + w] = image[rows][:, cols]
    r, c = (side - H) // 2, (side - W) // 2
    return canvas[r : r + H, c : c + W]


@pytest.mark.slow
def test_shape_dtype_and_determinism():
    images = _images()
    out = augment.dc_augment(jax.random.key(0), images)
    assert out.shape == images.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, augment.dc_augment(jax.random.key(0), images))
    assert not np.allclose(out, augment.dc_augment(jax.random.key(1), images))
    np.testing.assert_allclose(jax.jit(augment.dc_augment)(jax.random.key(0), images), out, atol=1e-5)


@pytest.mark.slow
def test_vmap_over_a_model_axis():
    images = jnp.stack([_images(4, seed=s) for s in range(3)])
    keys = jax.random.split(jax.random.key(0), 3)
    out = jax.jit(jax.vmap(augment.dc_augment))(keys, images)
    assert out.shape == images.shape
    np.testing.assert_allclose(out[1], augment.dc_augment(keys[1], images[1]), atol=1e-5)


@pytest.mark.slow
def test_dc_augment_is_the_documented_mix_of_ops():
    images = _images(32, c=3)
    key = jax.random.key(5)
    k = jax.random.split(key, 4)
    choice = np.asarray(jax.random.randint(k[0], (32,), 0, 3))
    assert set(choice) == {0, 1, 2}
    mean = images.mean(axis=(0, 1, 2))
    expected = np.select(
        [choice[:, None, None, None] == i for i in range(3)],
        [augment.crop(k[1], images, mean), augment.scale(k[2], images, 0.0), augment.rotate(k[3], images, mean)],
    )
    np.testing.assert_allclose(augment.dc_augment(key, images), expected, atol=1e-5)


def test_crop_moves_a_dot_by_a_small_integer_shift():
    images = _dot_images(64, 13, 15)
    key = jax.random.key(2)
    out = np.asarray(augment.crop(key, images, jnp.zeros(1)))
    shifts = np.asarray(augment._crop_shifts(key, 64))
    assert shifts.min() == -4 and shifts.max() == 3  # the reference's randint(0, 8) - 4
    for b in range(64):
        ((row, col),) = np.argwhere(out[b, :, :, 0] > 0)
        assert (row, col) == (13 - shifts[b, 0], 15 - shifts[b, 1]) and out[b, row, col, 0] == 1.0


def test_crop_fills_with_the_given_value():
    images = jnp.ones((16, H, W, 1))
    out = np.asarray(augment.crop(jax.random.key(0), images, jnp.array([-3.0])))
    assert set(np.unique(out)) <= {1.0, -3.0} and (out == -3.0).any()
    assert ((out == -3.0).sum(axis=(1, 2, 3)) <= 4 * (H + W)).all()


def test_rotate_maps_a_pixel_to_the_expected_place():
    # Centre (13.5, 13.5); a dot 10 px above it, turned 30 degrees counter-clockwise (row axis points down).
    row, col = 3, 13
    out = np.asarray(augment.rotate_by(_dot_images(1, row, col), jnp.array([30.0]), 0.0))[0, :, :, 0]
    theta = np.deg2rad(30.0)
    rel = np.array([row - 13.5, col - 13.5])
    inverse = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])  # R^T
    expected = inverse @ rel + 13.5
    found = np.unravel_index(out.argmax(), out.shape)
    assert np.abs(np.array(found) - expected).max() <= 1.0
    centroid = (np.argwhere(out > 0) * out[out > 0][:, None]).sum(axis=0) / out.sum()
    np.testing.assert_allclose(centroid, expected, atol=0.5)


@pytest.mark.parametrize("angle", [-45.0, -17.0, 0.0, 33.0, 90.0])
def test_rotate_matches_scipy_bilinear(angle):
    images = _images(1)
    fill = 0.25
    ours = augment.rotate_by(images, jnp.array([angle]), jnp.array([fill]))
    ref = scipy.ndimage.rotate(
        np.asarray(images[0, :, :, 0]), angle, reshape=False, order=1, mode="grid-constant", cval=fill
    )
    np.testing.assert_allclose(ours[0, :, :, 0], ref, atol=1e-4)


def test_rotate_angles_are_integers_in_range():
    angles = np.asarray(augment._rotation_angles(jax.random.key(0), 5000))
    assert np.all(angles == np.round(angles)) and angles.min() == -45 and angles.max() == 44


def test_scale_by_one_is_identity():
    images = _images(4, c=3)
    np.testing.assert_array_equal(augment.scale_by(images, jnp.ones((4, 2)), 0.0), images)


def test_scale_matches_reference_resize_pad_crop():
    images = _images(1, c=2)
    for h in (22, 23, 27, 29, 33):
        for w in (22, 28, 34):
            factors = np.array([[(h + 0.5) / H, (w + 0.5) / W]], np.float32)
            ours = augment.scale_by(images, jnp.asarray(factors), jnp.array([-2.0, 5.0]))[0]
            ref = _reference_scale(np.asarray(images[0]), factors[0, 0], factors[0, 1], np.array([-2.0, 5.0]))
            np.testing.assert_array_equal(ours, ref, err_msg=f"h={h} w={w}")


@pytest.mark.slow
def test_dc_fill_is_batch_channel_mean_and_zero_for_scale():
    images = _images(64, c=3) + jnp.array([1.0, 2.0, 3.0])
    mean = np.asarray(images.mean(axis=(0, 1, 2)))
    key = jax.random.key(11)
    out = np.asarray(augment.dc_augment(key, images))
    k = jax.random.split(key, 4)
    choice = np.asarray(jax.random.randint(k[0], (64,), 0, 3))
    factors = np.asarray(augment._scale_factors(k[2], 64))
    angles = np.asarray(augment._rotation_angles(k[3], 64))
    # A rotation by >= 10 degrees leaves its corners outside the source; a shrink in both axes pads a border.
    rotated = np.flatnonzero((choice == 2) & (np.abs(angles) >= 10))
    shrunk = np.flatnonzero((choice == 1) & (np.floor(factors * H) <= H - 2).all(axis=1))
    assert rotated.size and shrunk.size
    np.testing.assert_allclose(out[rotated, 0, 0], np.broadcast_to(mean, (rotated.size, 3)), rtol=1e-5)
    np.testing.assert_array_equal(out[shrunk, 0, 0], 0.0)  # the reference pads scaled images with zeros


@pytest.mark.slow
def test_gradients_flow_to_images():
    grad = jax.grad(lambda x: augment.dc_augment(jax.random.key(0), x).sum())(_images(4))
    assert grad.shape == (4, H, W, 1) and np.isfinite(grad).all() and np.abs(grad).sum() > 0


def test_registry():
    images = _images(2)
    assert augment.get_augment("none") is augment.identity_augment
    assert augment.get_augment("dc") is augment.dc_augment
    assert augment.identity_augment(jax.random.key(0), images) is images
    assert augment.get_augment("dsa_digits") is dsa.training_augment(dsa.STRATEGY_DIGITS)
    assert augment.get_augment("dsa") is dsa.training_augment(dsa.STRATEGY_DEFAULT)
    assert augment.dsa_augment_name("crop_flip") == "dsa" and augment.dsa_augment_name("crop") == "dsa_digits"
    with pytest.raises(ValueError, match="'kip'.*none, dc, dsa, dsa_digits"):
        augment.get_augment("kip")
