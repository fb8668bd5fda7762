"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021) as pure JAX functions of (key, images).

Every op maps ``images: [B, H, W, C]`` (NHWC, float, normalised) to the same shape and dtype and is differentiable
w.r.t. the images: colour ops are affine in the pixels, crop (translation) is a masked gather, cutout a
multiplicative mask, flip a select, and scale / rotate an affine grid with bilinear sampling (zero outside).
Randomness comes only from the key passed in.

Siamese rule: the same key on two batches draws the same transform parameters. With ``param_mode="batch"`` (the
reference's setting in DC, where the real and synthetic batches of a class differ in size) one parameter draw is
shared by every image of the batch, so ``dsa_augment(key, x)[:k] == dsa_augment(key, x[:k])``. With
``param_mode="image"`` each image gets its own draw; two batches of the SAME size then get the same transform for
image i.

Parameters carried over from the reference DSA code (``ParamDiffAug``):
  * scale: independent x / y factors ~ U(1/1.2, 1.2) (``scale`` = 1.2);
  * rotate: angle ~ U(-15, 15) degrees (``rotate_degrees``);
  * crop (translation): integer shift in [-s, s] per axis, s = int(0.125 * size + 0.5), zero padding;
  * cutout: a square of side int(0.5 * size + 0.5) at a random centre is zeroed (clipped at the border);
  * color = brightness (+U(-0.5, 0.5)), then saturation (deviation from the per-pixel channel mean times U(0, 2)),
    then contrast (deviation from the per-image mean times U(0.5, 1.5));
  * flip: horizontal, with probability 0.5.
Which ops run on a call (``DSAParams.select``): "one" (default, the reference's ``aug_mode='S'`` and docs/protocol.md
section 5: "one op group is drawn per call") draws ONE op group of the strategy uniformly from the key, for the whole
batch, so the Siamese pair also shares the op; "all" (the reference's ``aug_mode='M'``) applies every listed op in
strategy order. Op number i (its position in the strategy) always draws its parameters from ``fold_in(key, i)``.

Used by gradient matching with DSA (``dcjax.condense.gradient_matching``, batch mode, one key per class and
matching step), by distribution matching (``dcjax.condense.distribution_matching``) and as the training
augmentation "dsa" / "dsa_digits" (``dcjax.augment``, image mode), as in the reference, where DSA runs both in the
inner loop and in evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from dcjax import errors
from dcjax import sampling

STRATEGY_DIGITS = "color_crop_cutout_scale_rotate"  # no flip for digits: a mirrored digit is a different glyph
STRATEGY_DEFAULT = "color_crop_cutout_flip_scale_rotate"
DIGIT_DATASETS = ("mnist", "svhn_cropped")  # docs/protocol.md section 5: the MNIST/SVHN strategy has no flip.
OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
PARAM_MODES = ("batch", "image")
SELECTS = ("one", "all")
_CHOICE_STREAM = 1_000_003  # fold_in data for the op choice; far from the op positions 0..5.
_FLIP_PROB = 0.5


@dataclasses.dataclass(frozen=True)
class DSAParams:
    """Ranges of the DSA ops (reference defaults) and how parameters are shared across a batch.

    scale: max factor (>= 1), factors ~ U(1/scale, scale); rotate_degrees: max |angle|; crop: max shift as a fraction
    of the size, in [0, 1); cutout: square side as a fraction of the size, in [0, 1]; brightness: half-width of the
    additive offset; saturation: max multiplier, factor ~ U(0, saturation); contrast: half-width around 1, factor ~
    U(1 - contrast, 1 + contrast), in [0, 1]; param_mode: "batch" (one draw per batch) or "image" (one per image);
    select: "one" (one op group per call, the reference default) or "all" (every op of the strategy, in order).
    """

    scale: float = 1.2
    rotate_degrees: float = 15.0
    crop: float = 0.125
    cutout: float = 0.5
    brightness: float = 0.5
    saturation: float = 2.0
    contrast: float = 0.5
    param_mode: str = "batch"
    select: str = "one"

    def __post_init__(self) -> None:
        checks = {
            "scale": self.scale >= 1.0,
            "rotate_degrees": self.rotate_degrees >= 0.0,
            "crop": 0.0 <= self.crop < 1.0,
            "cutout": 0.0 <= self.cutout <= 1.0,
            "brightness": self.brightness >= 0.0,
            "saturation": self.saturation >= 0.0,
            "contrast": 0.0 <= self.contrast <= 1.0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not (ok and math.isfinite(value)):
                raise ValueError(f"DSAParams.{name} out of range: {value!r}")
        if self.param_mode not in PARAM_MODES:
            raise ValueError(f"DSAParams.param_mode must be one of {PARAM_MODES}, got {self.param_mode!r}")
        if self.select not in SELECTS:
            raise ValueError(f"DSAParams.select must be one of {SELECTS}, got {self.select!r}")


def strategy_for(dataset: str) -> str:
    """The reference DSA strategy for a TFDS dataset name: no flip for digit datasets."""
    return STRATEGY_DIGITS if dataset in DIGIT_DATASETS else STRATEGY_DEFAULT


# DC and DM matching: one draw per class batch, shared by the real and the synthetic batch (the Siamese rule across
# their different sizes). Training draws per image (``training_augment``).
SIAMESE = DSAParams(param_mode="batch")


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """'color_crop' -> ('color', 'crop'); 'none' or '' -> (). Unknown op names raise ConfigError (dsa_strategy)."""
    if strategy in ("", "none"):
        return ()
    names = tuple(strategy.split("_"))
    for name in names:
        if name not in OPS:
            raise errors.ConfigError(
                "dsa_strategy", f": unknown DSA op {name!r} in strategy {strategy!r}; valid: {', '.join(OPS)}"
            )
    return names


def _draws(
    key: jax.Array,
    batch: int,
    params: DSAParams,
    sample: Callable[[jax.Array, tuple], jax.Array],
    shape: tuple[int, ...] = (),
) -> jax.Array:
    """[B, *shape] parameters from ``sample(key, (n, *shape))``; n = 1 broadcast to B in batch mode, else n = B.

    Drawing a single row in batch mode is what makes the draw independent of the batch size (Siamese rule across
    the differently sized real and synthetic batches).
    """
    n = 1 if params.param_mode == "batch" else batch
    return jnp.broadcast_to(sample(key, (n, *shape)), (batch, *shape))


def _uniform(
    key: jax.Array, batch: int, params: DSAParams, low: float, high: float, shape: tuple[int, ...] = ()
) -> jax.Array:
    """[B, *shape] float32 ~ U(low, high), shared per `_draws`."""
    return _draws(key, batch, params, lambda k, s: jax.random.uniform(k, s, jnp.float32, low, high), shape)


@functools.partial(jax.jit, static_argnames="params")
def color(key: jax.Array, images: jax.Array, params: DSAParams = DSAParams()) -> jax.Array:
    """Brightness, then saturation, then contrast. images: [B, H, W, C] -> [B, H, W, C], same dtype."""
    b = images.shape[0]
    k_bright, k_sat, k_con = jax.random.split(key, 3)
    x = images.astype(jnp.float32)
    bright = _uniform(k_bright, b, params, -params.brightness, params.brightness)
    x = x + bright[:, None, None, None]
    # Saturation scales each pixel's deviation from its grey value (channel mean); a no-op for 1 channel.
    sat = _uniform(k_sat, b, params, 0.0, params.saturation)
    grey = jnp.mean(x, axis=3, keepdims=True)
    x = (x - grey) * sat[:, None, None, None] + grey
    con = _uniform(k_con, b, params, 1.0 - params.contrast, 1.0 + params.contrast)
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * con[:, None, None, None] + mean
    return x.astype(images.dtype)


def _translate(images: jax.Array, shifts: jax.Array) -> jax.Array:
    """out[b, i, j] = images[b, i - dy, j - dx] (zero outside); shifts: [B, 2] int (dy, dx). -> [B, H, W, C]."""
    b, h, w, _ = images.shape
    rows = jnp.arange(h)[None, :] - shifts[:, 0:1]  # [B, H]
    cols = jnp.arange(w)[None, :] - shifts[:, 1:2]  # [B, W]
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    # A gather with clipped indices is differentiable w.r.t. the images; the mask supplies the zero padding.
    rows_in, cols_in = jnp.clip(rows, 0, h - 1), jnp.clip(cols, 0, w - 1)
    out = images[jnp.arange(b)[:, None, None], rows_in[:, :, None], cols_in[:, None, :]]
    return jnp.where(valid[..., None], out, jnp.zeros((), images.dtype))


@functools.partial(jax.jit, static_argnames="params")
def crop(key: jax.Array, images: jax.Array, params: DSAParams = DSAParams()) -> jax.Array:
    """Integer translation by up to int(crop * size + 0.5) pixels per axis, zero padded. [B, H, W, C] -> same."""
    b, h, w, _ = images.shape
    k_y, k_x = jax.random.split(key)
    sy, sx = int(h * params.crop + 0.5), int(w * params.crop + 0.5)
    dy = _draws(k_y, b, params, lambda k, s: jax.random.randint(k, s, -sy, sy + 1))
    dx = _draws(k_x, b, params, lambda k, s: jax.random.randint(k, s, -sx, sx + 1))
    return _translate(images, jnp.stack([dy, dx], axis=1))


def _cutout_mask(centres: jax.Array, side_h: int, side_w: int, height: int, width: int) -> jax.Array:
    """[B, H, W, 1] float32 mask, 0 on the side_h x side_w box starting at centre - side // 2 (clipped), else 1.

    centres: [B, 2] int (row, col).
    """
    top = centres[:, 0:1] - side_h // 2  # [B, 1]
    left = centres[:, 1:2] - side_w // 2
    rows = jnp.arange(height)[None, :]
    cols = jnp.arange(width)[None, :]
    in_rows = (rows >= top) & (rows < top + side_h)  # [B, H]
    in_cols = (cols >= left) & (cols < left + side_w)  # [B, W]
    inside = in_rows[:, :, None] & in_cols[:, None, :]
    return jnp.where(inside, 0.0, 1.0)[..., None]


@functools.partial(jax.jit, static_argnames="params")
def cutout(key: jax.Array, images: jax.Array, params: DSAParams = DSAParams()) -> jax.Array:
    """Zeroes a square of side int(cutout * size + 0.5) at a random centre. [B, H, W, C] -> same."""
    b, h, w, _ = images.shape
    k_y, k_x = jax.random.split(key)
    side_h, side_w = int(h * params.cutout + 0.5), int(w * params.cutout + 0.5)
    # Reference centre range: [0, size + (1 - side % 2)), so even squares can sit half outside either border.
    cy = _draws(k_y, b, params, lambda k, s: jax.random.randint(k, s, 0, h + 1 - side_h % 2))
    cx = _draws(k_x, b, params, lambda k, s: jax.random.randint(k, s, 0, w + 1 - side_w % 2))
    mask = _cutout_mask(jnp.stack([cy, cx], axis=1), side_h, side_w, h, w)
    return (images * mask).astype(images.dtype)


@functools.partial(jax.jit, static_argnames="params")
def flip(key: jax.Array, images: jax.Array, params: DSAParams = DSAParams()) -> jax.Array:
    """Horizontal (width) flip with probability 0.5. [B, H, W, C] -> same."""
    do_flip = _draws(key, images.shape[0], params, lambda k, s: jax.random.bernoulli(k, _FLIP_PROB, s))
    return jnp.where(do_flip[:, None, None, None], images[:, :, ::-1, :], images)


def _affine_sample(images: jax.Array, mats: jax.Array) -> jax.Array:
    """Bilinear sample at source = mats @ (x, y) in normalised [-1, 1] coords (align_corners), zero outside.

    images: [B, H, W, C]; mats: [B, 2, 2] acting on (x = column, y = row) like PyTorch's affine_grid theta without
    translation. Returns [B, H, W, C] in the input dtype; differentiable w.r.t. images (and mats).
    """
    b, h, w, c = images.shape
    gy, gx = jnp.meshgrid(jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w), indexing="ij")
    src = jnp.einsum("bij,jp->bip", mats.astype(jnp.float32), jnp.stack([gx.ravel(), gy.ravel()]))  # [B, 2, HW]
    col = (src[:, 0] + 1.0) * 0.5 * (w - 1)
    row = (src[:, 1] + 1.0) * 0.5 * (h - 1)
    out = jnp.zeros((b, h * w, c), jnp.float32)
    for corner in sampling.neighbours(images, jnp.floor(row), jnp.floor(col)):
        weight = (1.0 - jnp.abs(row - corner.row)) * (1.0 - jnp.abs(col - corner.col))  # [B, HW]
        out = out + jnp.where(corner.inside, weight, 0.0)[:, :, None] * corner.values
    return out.reshape(b, h, w, c).astype(images.dtype)


@functools.partial(jax.jit, static_argnames="params")
def scale(key: jax.Array, images: jax.Array, params: DSAParams = DSAParams()) -> jax.Array:
    """Independent x / y factors ~ U(1/scale, scale) about the centre (factor > 1 shrinks). [B, H, W, C] -> same."""
    factors = _uniform(key, images.shape[0], params, 1.0 / params.scale, params.scale, shape=(2,))  # [B, 2]
    mats = jax.vmap(jnp.diag)(factors)
    return _affine_sample(images, mats)


@functools.partial(jax.jit, static_argnames="params")
def rotate(key: jax.Array, images: jax.Array, params: DSAParams = DSAParams()) -> jax.Array:
    """Rotation by U(-rotate_degrees, rotate_degrees) about the centre, zero outside. [B, H, W, C] -> same."""
    max_rad = math.radians(params.rotate_degrees)
    theta = _uniform(key, images.shape[0], params, -max_rad, max_rad)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    mats = jnp.stack([jnp.stack([cos, sin], axis=1), jnp.stack([-sin, cos], axis=1)], axis=1)  # [B, 2, 2]
    return _affine_sample(images, mats)


_OP_FNS: dict[str, Callable[..., jax.Array]] = {  # (key, images, params=DSAParams) -> images
    "color": color,
    "crop": crop,
    "cutout": cutout,
    "flip": flip,
    "scale": scale,
    "rotate": rotate,
}


@functools.partial(jax.jit, static_argnames=("strategy", "params"))
def dsa_augment(
    key: jax.Array, images: jax.Array, strategy: str = STRATEGY_DIGITS, params: DSAParams = DSAParams()
) -> jax.Array:
    """One op group of the strategy (``params.select='one'``) or all of them in order. [B, H, W, C] -> same.

    Op i of the strategy is keyed by fold_in(key, i); the choice of op by fold_in(key, _CHOICE_STREAM). Use the
    same key for the real and synthetic batch of a class to get the Siamese (shared) transform.
    """
    names = parse_strategy(strategy)
    ops = [
        functools.partial(_OP_FNS[name], jax.random.fold_in(key, index), params=params)
        for index, name in enumerate(names)
    ]
    if not ops:
        return images
    if params.select == "all":
        for op in ops:
            images = op(images)
        return images
    choice = jax.random.randint(jax.random.fold_in(key, _CHOICE_STREAM), (), 0, len(ops))
    # Under vmap (classes on GPU) lax.switch becomes a select over every branch: cheap next to a conv net.
    return jax.lax.switch(choice, ops, images)


@functools.cache
def training_augment(strategy: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """(key, images [B, H, W, C]) -> images: DSA with per-image draws, for training a network on a (synthetic) set.

    One op group per call, parameters drawn per image (the reference's unseeded ``DiffAugment`` in its inner loop
    and its evaluation). Cached so each strategy maps to ONE function object: callers use it as a static jit argument.
    """
    parse_strategy(strategy)
    return functools.partial(dsa_augment, strategy=strategy, params=DSAParams(param_mode="image"))
