"""The DC paper's evaluation augmentation ("crop_scale_rotate", used when training on MNIST synthetic data), in JAX.

Every op is an inverse affine map from output pixel coordinates (row, col) to source coordinates, so `dc_augment`
builds one 2x3 matrix per image for each op, selects the drawn op per image and samples the batch in ONE gather pass.
Everything is jit/vmap friendly (static shapes) and driven only by the key passed in. The public ops are wrapped in
``jax.jit`` because op-by-op eager execution compiles every primitive separately (about 5 s for the first eager call
versus 1 s); inside a caller's jit the wrapper is simply inlined.

Behaviour of the reference ``augment()`` (DC utils.py, strategy 'crop_scale_rotate', crop 4, scale 0.2, rotate 45)
and how this module follows it:
  * one op per image, uniformly among crop / scale / rotate;
  * fill value = per-channel mean over the whole batch, computed once before any op and treated as a constant
    (the reference converts it to Python floats, so no gradient flows through it);
  * crop: pad 4 px with the mean, take the window at offset ``randint(0, 8)`` per axis, i.e. the content shifts by
    ``s`` in [-4, 3] (output[i] = input[i + s]); the reference draws ``np.random.permutation(8)[0]``, so +4 never
    occurs and we keep that asymmetry;
  * scale: h = int(U(0.8, 1.2) * H) and w = int(U(0.8, 1.2) * W) independently, nearest resize (PyTorch
    ``F.interpolate`` default: src = floor(dst * in / out)), pasted centred on a max(h, w, H, W) square canvas of
    ZEROS (the reference uses ``torch.zeros`` here, not the mean), centre-cropped back to H x W;
  * rotate: integer angle ``randint(-45, 45)`` degrees about the image centre ((H-1)/2, (W-1)/2).
Deliberate deviations: rotate samples bilinearly with the mean filled in outside the image (the reference uses
``scipy.ndimage.rotate``, spline order 3, reshape=True then a centre crop that can sit half a pixel off-centre for
odd size differences); for multi-channel images rotate fills each channel with its own mean (the reference uses the
mean of the channel means; identical for MNIST).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dcjax import dsa
from dcjax import errors
from dcjax import sampling

Augment = Callable[[jax.Array, jax.Array], jax.Array]

_CROP, _SCALE, _ROTATE = 0, 1, 2
_CROP_PAD = 4
_MAX_SCALE = 0.2
_MAX_ANGLE = 45
# Nearest sampling floors affine coordinates; exact integers can come out as k - 1e-6 in float32, so nudge them.
_FLOOR_EPS = 1e-4


def _warp(images: jax.Array, mats: jax.Array, fill: jax.Array, nearest: jax.Array | bool) -> jax.Array:
    """Samples images [B, H, W, C] at source coords ``mats @ (row, col, 1)`` (mats [B, 2, 3]).

    Pixels whose source lies outside the image take ``fill`` (broadcastable to [B, C]). ``nearest`` ([B] bool or a
    bool) floors the source coords (PyTorch-style nearest); otherwise bilinear, with out-of-image neighbours counted
    as ``fill`` (scipy's 'grid-constant' mode). Returns [B, H, W, C] in the input dtype.
    """
    b, h, w, c = images.shape
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    grid = jnp.stack([rows.ravel(), cols.ravel(), jnp.ones(h * w, jnp.float32)])  # [3, H*W]
    src = jnp.einsum("bij,jp->bip", mats.astype(jnp.float32), grid)  # [B, 2, H*W]
    nearest = jnp.broadcast_to(jnp.asarray(nearest), (b,))[:, None, None]
    src = jnp.where(nearest, jnp.floor(src + _FLOOR_EPS), src)
    base = jnp.floor(src)
    frac = src - base  # exactly 0 for nearest: the three other neighbours get weight 0
    fill = jnp.broadcast_to(jnp.asarray(fill, jnp.float32), (b, c))[:, None, :]
    out = jnp.zeros((b, h * w, c), jnp.float32)
    for i, corner in enumerate(sampling.neighbours(images, base[:, 0], base[:, 1])):
        dy, dx = divmod(i, 2)
        weight = (frac[:, 0] if dy else 1 - frac[:, 0]) * (frac[:, 1] if dx else 1 - frac[:, 1])
        out = out + weight[:, :, None] * jnp.where(corner.inside[:, :, None], corner.values, fill)
    return out.reshape(b, h, w, c).astype(images.dtype)


def _translation_matrices(shifts: jax.Array) -> jax.Array:
    """[B, 2] (row, col) shifts -> [B, 2, 3] maps with source = output + shift."""
    eye = jnp.broadcast_to(jnp.eye(2, dtype=jnp.float32), (shifts.shape[0], 2, 2))
    return jnp.concatenate([eye, shifts.astype(jnp.float32)[:, :, None]], axis=2)


def _crop_shifts(key: jax.Array, batch: int, pad: int = _CROP_PAD) -> jax.Array:
    """[B, 2] int32 shifts in [-pad, pad - 1]: the reference's crop offset randint(0, 2 * pad) minus pad."""
    return jax.random.randint(key, (batch, 2), -pad, pad)


def _scale_matrices(factors: jax.Array, height: int, width: int) -> jax.Array:
    """[B, 2] (h, w) scale factors -> [B, 2, 3] maps of the reference's resize + centre pad/crop.

    The new size is int(f * side); the resized image sits centred on a max(h, w, H, W) square canvas, which is
    centre-cropped back to H x W, so output row i reads resized row i + d with d = (m - H)//2 - (m - h)//2, i.e.
    source row (i + d) * H / h (floored by nearest sampling; outside [0, H) means canvas padding).
    """
    sides = jnp.array([height, width], jnp.float32)
    new = jnp.floor(factors.astype(jnp.float32) * sides).astype(jnp.int32)  # [B, 2]; floor == int() as f > 0
    canvas = jnp.maximum(jnp.max(new, axis=1, keepdims=True), max(height, width))  # [B, 1]
    offset = (canvas - sides.astype(jnp.int32)) // 2 - (canvas - new) // 2  # [B, 2]
    ratio = sides / new.astype(jnp.float32)  # source pixels per resized pixel
    zero = jnp.zeros_like(ratio[:, 0])
    return jnp.stack(
        [
            jnp.stack([ratio[:, 0], zero, offset[:, 0] * ratio[:, 0]], axis=1),
            jnp.stack([zero, ratio[:, 1], offset[:, 1] * ratio[:, 1]], axis=1),
        ],
        axis=1,
    )


def _scale_factors(key: jax.Array, batch: int, max_scale: float = _MAX_SCALE) -> jax.Array:
    """[B, 2] independent (h, w) factors ~ U(1 - max_scale, 1 + max_scale)."""
    return jax.random.uniform(key, (batch, 2), minval=1 - max_scale, maxval=1 + max_scale)


def _rotation_matrices(angles: jax.Array, height: int, width: int) -> jax.Array:
    """[B] angles in degrees -> [B, 2, 3] maps source = R (out - centre) + centre, R = [[cos, sin], [-sin, cos]].

    Same convention as ``scipy.ndimage.rotate(img, angle, axes=(0, 1))`` on (row, col): positive angles turn the
    picture counter-clockwise as displayed (row 0 at the top).
    """
    theta = jnp.deg2rad(angles.astype(jnp.float32))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    rot = jnp.stack([jnp.stack([cos, sin], axis=1), jnp.stack([-sin, cos], axis=1)], axis=1)  # [B, 2, 2]
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2], jnp.float32)
    offset = centre - jnp.einsum("bij,j->bi", rot, centre)
    return jnp.concatenate([rot, offset[:, :, None]], axis=2)


def _rotation_angles(key: jax.Array, batch: int, max_angle: int = _MAX_ANGLE) -> jax.Array:
    """[B] integer angles in [-max_angle, max_angle), as float32 degrees (reference: np.random.randint)."""
    return jax.random.randint(key, (batch,), -max_angle, max_angle).astype(jnp.float32)


@jax.jit
def crop(key: jax.Array, images: jax.Array, fill: jax.Array) -> jax.Array:
    """Random integer shift in [-4, 3] per axis and image, mean-padded. images [B, H, W, C] -> same; fill [C]."""
    return _warp(images, _translation_matrices(_crop_shifts(key, images.shape[0])), fill, nearest=True)


@jax.jit
def scale_by(images: jax.Array, factors: jax.Array, fill: jax.Array) -> jax.Array:
    """Reference resize by [B, 2] (h, w) factors, nearest, centre pad (with ``fill``) / crop. -> [B, H, W, C]."""
    _, h, w, _ = images.shape
    return _warp(images, _scale_matrices(factors, h, w), fill, nearest=True)


@jax.jit
def scale(key: jax.Array, images: jax.Array, fill: jax.Array) -> jax.Array:
    """`scale_by` with h and w factors ~ U(0.8, 1.2) per image. images [B, H, W, C] -> same."""
    return scale_by(images, _scale_factors(key, images.shape[0]), fill)


@jax.jit
def rotate_by(images: jax.Array, angles: jax.Array, fill: jax.Array) -> jax.Array:
    """Bilinear rotation by [B] angles (degrees) about the centre, ``fill`` outside. -> [B, H, W, C]."""
    _, h, w, _ = images.shape
    return _warp(images, _rotation_matrices(angles, h, w), fill, nearest=False)


@jax.jit
def rotate(key: jax.Array, images: jax.Array, fill: jax.Array) -> jax.Array:
    """`rotate_by` an integer angle in [-45, 45) degrees per image. images [B, H, W, C] -> same."""
    return rotate_by(images, _rotation_angles(key, images.shape[0]), fill)


@jax.jit
def dc_augment(key: jax.Array, images: jax.Array) -> jax.Array:
    """DC evaluation augmentation: each image gets one of crop / scale / rotate, chosen uniformly.

    images: [B, H, W, C] normalised float; returns the same shape and dtype. With ``k = jax.random.split(key, 4)``
    an image whose drawn op (``randint(k[0], (B,), 0, 3)``: 0 crop, 1 scale, 2 rotate) is crop equals
    ``crop(k[1], images, mean)`` at that image, scale ``scale(k[2], images, 0)``, rotate ``rotate(k[3], images,
    mean)``, where mean is the batch's per-channel mean. All three maps are built, one is selected per image, and the
    batch is sampled once.
    """
    b, h, w, _ = images.shape
    k_choice, k_crop, k_scale, k_rotate = jax.random.split(key, 4)
    # The reference takes the mean as Python floats: a constant, not a path for gradients.
    mean = jax.lax.stop_gradient(jnp.mean(images, axis=(0, 1, 2), dtype=jnp.float32))
    choice = jax.random.randint(k_choice, (b,), 0, 3)
    mats = jnp.stack(
        [
            _translation_matrices(_crop_shifts(k_crop, b)),
            _scale_matrices(_scale_factors(k_scale, b), h, w),
            _rotation_matrices(_rotation_angles(k_rotate, b), h, w),
        ]
    )  # [3, B, 2, 3]
    mats = mats[choice, jnp.arange(b)]
    # The reference pads scaled images with zeros but crops/rotations with the mean.
    fill = jnp.where((choice == _SCALE)[:, None], 0.0, mean[None, :])
    return _warp(images, mats, fill, nearest=choice != _ROTATE)


def identity_augment(key: jax.Array, images: jax.Array) -> jax.Array:
    """No augmentation: returns ``images`` unchanged (the key is ignored)."""
    del key
    return images


# "dsa" / "dsa_digits": Differentiable Siamese Augmentation with per-image draws, the evaluation protocol of DSA and
# DM (docs/protocol.md sections 4-5); "dsa_digits" leaves out the flip (a mirrored digit is another glyph).
AUGMENTATIONS: dict[str, Augment] = {
    "none": identity_augment,
    "dc": dc_augment,
    "dsa": dsa.training_augment(dsa.STRATEGY_DEFAULT),
    "dsa_digits": dsa.training_augment(dsa.STRATEGY_DIGITS),
}


def dsa_augment_name(strategy: str) -> str:
    """The registered DSA training augmentation closest to a DSA strategy: 'dsa' if it flips, else 'dsa_digits'."""
    return "dsa" if "flip" in dsa.parse_strategy(strategy) else "dsa_digits"


def small_set_augment(dataset: str) -> str:
    """The default augmentation of a small training set (a per-class subset, a synthetic set) on ``dataset``.

    'dc' on MNIST, as the reference trains and evaluates DC's MNIST sets; 'none' elsewhere. Methods that match
    through DSA evaluate with DSA's instead (``condense.evaluation_augment``).
    """
    return "dc" if dataset == "mnist" else "none"


def get_augment(name: str) -> Augment:
    """The augmentation called ``name``: one of `AUGMENTATIONS` ("none", "dc", "dsa", "dsa_digits")."""
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise errors.ConfigError(None, f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}") from None
