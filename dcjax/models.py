"""Model zoo: the DC paper's reference networks, as pure functions over explicit pytrees.

This is the only module in dcjax that imports ``flax.linen``. Everything else sees a
``ModelFns`` bundle of pure functions (``init``, ``apply``, ``apply_train``, ``embed``)
over a variables dict ``{"params": ..., ["batch_stats": ...]}``, so callers can jit,
vmap and grad them freely and BatchNorm state is never mutated behind their back.

Conventions (see docs/protocol.md section 2):
  * Images are NHWC float32 ``[B, H, W, C]``; logits are ``[B, num_classes]``.
  * Every convolution is :class:`Conv` (params ``kernel`` ``(kh, kw, Cin, Cout)``, output
    axis last, and ``bias`` ``(Cout,)``); every linear layer is :class:`Dense` (``kernel``
    ``(in, out)``, ``bias`` ``(out,)``). Padding is explicit and symmetric, as in PyTorch.
  * ``init="reference"`` reproduces PyTorch's default init (kernel AND bias
    ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))); ``init="flax"`` uses lecun-normal / zeros.
  * Norm scale 1 / bias 0 in both inits; eps 1e-5 everywhere (PyTorch's default).

Deviations from the PyTorch reference, on purpose:
  * Flattening is NHWC order (H, W, C) rather than (C, H, W): the same function class,
    a permuted classifier kernel.
  * BatchNorm uses flax's running-variance update, which keeps the biased batch variance
    (PyTorch stores the unbiased one; the factor n/(n-1) only matters for tiny batches).
  * Max-pooling back-propagates a tie evenly among the tied inputs (PyTorch picks one).
    After a ReLU the only likely ties are at 0, where the ReLU gradient is 0 anyway.
  * Only ConvNet takes width/depth/norm/activation/pooling; the other architectures
    are fixed as in the DC code (ReLU, max-pool, their own norms).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dcjax import errors

MODEL_NAMES: tuple[str, ...] = (
    "convnet",
    "mlp",
    "lenet",
    "alexnet",
    "vgg11",
    "resnet18",
    "convnet_bn",
    "alexnet_bn",
    "vgg11_bn",
    "resnet18_bn",
)
NORMS: tuple[str, ...] = ("none", "batchnorm", "layernorm", "instancenorm", "groupnorm")
ACTIVATIONS: tuple[str, ...] = ("relu", "sigmoid", "leakyrelu", "swish")
POOLINGS: tuple[str, ...] = ("avgpool", "maxpool", "none")
INITS: tuple[str, ...] = ("reference", "flax")
CONV_IMPLS: tuple[str, ...] = ("im2col", "lax")
# The lowering of passes no gradient flows through (``forward_only``): never a user setting, because its own
# gradient is slow.
FORWARD_IMPL = "forward"
# Matmul input precision (conv and dense layers): bf16 inputs with fp32 accumulation, or fp32 throughout.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

_ACTIVATION_FNS: dict[str, Callable] = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "leakyrelu": functools.partial(nn.leaky_relu, negative_slope=0.01),
    "swish": nn.swish,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which network to build; ``make_model`` validates every field eagerly."""

    name: str = "convnet"  # one of MODEL_NAMES; "*_bn" = BatchNorm twin
    width: int = 128  # ConvNet channels (ConvNet only)
    depth: int = 3  # ConvNet blocks (ConvNet only)
    norm: str = "instancenorm"  # ConvNet only: one of NORMS
    activation: str = "relu"  # ConvNet only: one of ACTIVATIONS (leakyrelu slope 0.01)
    pooling: str = "avgpool"  # ConvNet only: one of POOLINGS
    init: str = "reference"  # "reference" = PyTorch default; "flax" = Flax defaults
    conv_impl: str = "im2col"  # every conv in the zoo: "im2col" (matmul) or "lax" (lax.conv)
    # Every conv / dense matmul: "fp32", or "bf16" inputs with fp32 accumulation (norms, activations, pooling and
    # parameters stay fp32). Condensation sets it from ``CondenseConfig.precision`` for its matching network only.
    precision: str = "fp32"


@dataclasses.dataclass(frozen=True)
class ModelFns:
    """Pure functions of one network; ``variables`` = {"params", ["batch_stats"]}.

    init(key) -> variables
    apply(variables, x [B,H,W,C]) -> logits [B, K]                      (eval mode)
    apply_train(variables, x) -> (logits [B, K], variables_out)         (train mode)
    embed(variables, x) -> features [B, D], the classifier's flattened input (eval mode)
    """

    init: Callable
    apply: Callable
    apply_train: Callable
    embed: Callable
    has_batch_stats: bool
    num_params: int
    config: ModelConfig | None = None  # What was built (e.g. callers check conv_impl).
    image_shape: tuple[int, int, int] | None = None  # (H, W, C) it was built for.
    num_classes: int | None = None


def count_params(params: Any) -> int:
    """Total number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


# ----------------------------------------------------------------------------- layers


def _torch_uniform(fan_in: int) -> Callable:
    """PyTorch's default conv/linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _initializers(init: str, fan_in: int) -> tuple[Callable, Callable]:
    """(kernel_init, bias_init) for a layer with the given fan-in."""
    if init == "reference":
        return _torch_uniform(fan_in), _torch_uniform(fan_in)
    return nn.initializers.lecun_normal(), nn.initializers.zeros_init()


# lecun_normal = truncated N(0, 1) on [-2, 2], rescaled by this std to unit variance.
_TRUNCATED_NORMAL_STD = 0.87962566103423978


def _redraw_layers(key: jax.Array, params: dict, init: str) -> dict:
    """``params`` with every Conv/Dense kernel (and bias) redrawn from ONE random vector.

    Same distribution as the layers' own initializers (``_initializers``); only the
    sampling is pooled. Why: each jax.random call compiles to its own threefry kernel,
    ~0.15 s of XLA:CPU compile apiece, which made a model's first init take 1-4 s.
    Inside jit, module.init's per-parameter draws then become dead code.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)

    def name(path):
        return getattr(path[-1], "key", None)

    kernels = {path[:-1]: leaf.shape for path, leaf in flat if name(path) == "kernel"}
    # Flax-scheme biases are zeros, so only kernels are drawn there.
    names = ("kernel", "bias") if init == "reference" else ("kernel",)
    todo = [i for i, (path, _) in enumerate(flat) if path[:-1] in kernels and name(path) in names]
    total = sum(flat[i][1].size for i in todo)
    if init == "reference":
        noise = jax.random.uniform(key, (total,), jnp.float32, -1.0, 1.0)
    else:
        noise = jax.random.truncated_normal(key, -2.0, 2.0, (total,)) / _TRUNCATED_NORMAL_STD
    leaves, offset = [leaf for _, leaf in flat], 0
    for i in todo:
        path, leaf = flat[i]
        scale = 1.0 / math.sqrt(math.prod(kernels[path[:-1]][:-1]))  # 1/sqrt(fan_in)
        chunk = noise[offset : offset + leaf.size]
        leaves[i] = (scale * chunk).reshape(leaf.shape).astype(leaf.dtype)
        offset += leaf.size
    return jax.tree_util.tree_unflatten(treedef, leaves)


def conv_lax(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """XLA's native convolution. x [..., H, W, Cin], kernel (kh, kw, Cin, Cout)."""
    lead, x4 = x.shape[:-3], x.reshape(-1, *x.shape[-3:])
    y = lax.conv_general_dilated(
        x4,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.float32,
    )
    return y.reshape(*lead, *y.shape[1:])


def conv_im2col(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """The same convolution as one matmul over explicitly gathered patches.

    x [..., H, W, Cin] -> patches [..., H', W', kh*kw*Cin] (the kh*kw shifted, strided
    slices of the padded input, concatenated on channels in (i, j, c) order, matching
    ``kernel.reshape(kh*kw*Cin, Cout)``) -> [..., H', W', Cout].

    Why: XLA:CPU runs a GEMM far closer to its roofline than lax.conv (ConvNet-128 MNIST
    fwd+bwd, batch 256, 2 Zen 4 cores: 1.09 s vs 2.5 s), and under vmap over parameter
    sets this becomes a batched GEMM instead of a grouped conv (10 models x 26 images:
    1.15 s vs 2.85 s). Costs: the patches tensor is kh*kw times the input (~0.3 GB for
    the 16x16x128 layer at batch 256) and compiling takes ~2x longer than lax.conv.
    """
    kh, kw, cin, cout = kernel.shape
    pad = [(0, 0)] * (x.ndim - 3) + [(padding, padding), (padding, padding), (0, 0)]
    xp = jnp.pad(x, pad) if padding else x
    *lead, h, w, _ = xp.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    n = len(lead)
    cols = [
        lax.slice(
            xp,
            (0,) * n + (i, j, 0),
            (*lead, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, cin),
            (1,) * n + (stride, stride, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    # One 2-D GEMM over all B*H'*W' positions (a batched GEMM under vmap).
    y = jnp.dot(
        patches.reshape(-1, kh * kw * cin), kernel.reshape(kh * kw * cin, cout), preferred_element_type=jnp.float32
    )
    return y.reshape(*lead, ho, wo, cout)


def conv_direct(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """A single-channel convolution as kh*kw shifted multiply-adds. x [..., H, W, 1], kernel (kh, kw, 1, Cout).

    Why: with one input channel the im2col GEMM has a contraction of only kh*kw = 9, so it is bound by writing its
    patches and output, and lax.conv is no better; this is one elementwise fusion that reads the small input and
    writes the output once (ConvNet-32's first MNIST layer forward: ~20 ms vs ~60 ms for 2,560 images, see
    ``forward_only``). Its gradient is slower than im2col's, so only forward-only passes use it.
    """
    kh, kw, cin, _ = kernel.shape
    if cin != 1:
        raise ValueError(f"conv_direct takes single-channel inputs, got {cin} channels")
    pad = [(0, 0)] * (x.ndim - 3) + [(padding, padding), (padding, padding), (0, 0)]
    xp = jnp.pad(x, pad) if padding else x
    *lead, h, w, _ = xp.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    n = len(lead)
    y = None
    for i in range(kh):
        for j in range(kw):
            end = (*lead, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, 1)
            shifted = lax.slice(xp, (0,) * n + (i, j, 0), end, (1,) * n + (stride, stride, 1))
            term = shifted.astype(jnp.float32) * kernel[i, j, 0].astype(jnp.float32)  # [..., H', W', Cout]
            y = term if y is None else y + term
    assert y is not None
    return y


def conv_forward(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """The forward-only lowering (``FORWARD_IMPL``): ``conv_direct`` for single-channel inputs, else lax.conv."""
    return (conv_direct if kernel.shape[2] == 1 else conv_lax)(x, kernel, stride, padding)


_CONV_FNS: dict[str, Callable] = {"lax": conv_lax, "im2col": conv_im2col, FORWARD_IMPL: conv_forward}


class Conv(nn.Module):
    """k x k convolution with symmetric zero padding. [B,H,W,Cin] -> [B,H',W',features]."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    impl: str = "im2col"
    weight_init: str = "reference"
    precision: str = "fp32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.kernel_size, x.shape[-1]
        kernel_init, bias_init = _initializers(self.weight_init, k * k * cin)
        kernel = self.param("kernel", kernel_init, (k, k, cin, self.features))
        y = _CONV_FNS[self.impl](*_matmul_inputs(self.precision, x, kernel), self.stride, self.padding)
        if self.use_bias:
            y = y + self.param("bias", bias_init, (self.features,))
        return y


class Dense(nn.Module):
    """Affine layer with PyTorch-default or Flax-default init. [..., in] -> [..., features]."""

    features: int
    weight_init: str = "reference"
    precision: str = "fp32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_init, bias_init = _initializers(self.weight_init, x.shape[-1])
        kernel = self.param("kernel", kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", bias_init, (self.features,))
        return jnp.dot(*_matmul_inputs(self.precision, x, kernel), preferred_element_type=jnp.float32) + bias


def _matmul_inputs(precision: str, x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x, kernel) as a conv / dense layer multiplies them: cast to bf16 for precision "bf16", else unchanged.

    Why bf16: a CPU with AVX512-BF16 runs a bf16 GEMM with fp32 accumulation ~1.8x faster than an fp32 one, and
    writing im2col patches in bf16 halves their memory traffic. Without those instructions (AVX2 only) bf16 is
    slower than fp32 (docs/SPEED.md). The products accumulate in fp32
    (``preferred_element_type``), so only the inputs are rounded (relative error ~4e-3 per element).
    """
    if precision == "bf16":
        return x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    return x, kernel


def _norm(kind: str, x: jax.Array, train: bool, name: str) -> jax.Array:
    """Apply a normalisation layer named ``name`` inside the calling compact module.

    x [B, H, W, C]. eps 1e-5 as in PyTorch; exact (two-pass) variance because the fast
    E[x^2]-E[x]^2 form loses precision on un-centred activations.
    """
    if kind == "none":
        return x
    if kind == "batchnorm":  # flax momentum 0.9 == torch momentum 0.1
        return nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5, use_fast_variance=False, name=name
        )(x)
    if kind == "layernorm":  # torch nn.LayerNorm([C, H, W]): stats and affine over (H, W, C)
        axes = (-3, -2, -1)
        return nn.LayerNorm(epsilon=1e-5, reduction_axes=axes, feature_axes=axes, use_fast_variance=False, name=name)(x)
    if kind == "instancenorm":
        return InstanceNorm(name=name)(x)
    return nn.GroupNorm(num_groups=4, epsilon=1e-5, use_fast_variance=False, name=name)(x)


class InstanceNorm(nn.Module):
    """Per-image, per-channel normalisation over (H, W) with a learned affine: [..., H, W, C] -> same shape.

    The same function and parameters ("scale", "bias", each [C]) as ``nn.GroupNorm(num_groups=C)``, with the
    same two-pass variance, eps 1e-5 and operation order (torch ``GroupNorm(C, C)``, the reference ConvNet's
    instance norm). Why not GroupNorm itself: it reshapes to [..., G, C/G] = [..., C, 1] groups, a layout XLA:CPU
    reduces ~2.5x slower; on the first ConvNet-128 block (28x28x128) this norm took more time than the convolution
    (benchmarks/dm_profile.py). Results agree with GroupNorm to float rounding (1e-6 on 28x28 maps).
    """

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = x.mean(axis=(-3, -2), keepdims=True)
        var = jnp.square(x - mean).mean(axis=(-3, -2), keepdims=True)
        return (x - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias


def pool2x2(x: jax.Array, kind: str) -> jax.Array:
    """2x2 stride-2 pooling, flooring odd sizes like torch. [..., H, W, C] -> [..., H//2, W//2, C].

    Reshape + reduce rather than reduce_window: takes any number of leading axes, and
    measured as fast as reduce_window on CPU (ConvNet-128 step: 1.09 s vs 1.03 s, noise).
    """
    if kind == "none":
        return x
    *lead, h, w, c = x.shape
    x = x[..., : h // 2 * 2, : w // 2 * 2, :].reshape(*lead, h // 2, 2, w // 2, 2, c)
    return x.mean(axis=(-4, -2)) if kind == "avgpool" else x.max(axis=(-4, -2))


def _conv(
    m: nn.Module, features: int, k: int, padding: int, stride: int = 1, use_bias: bool = True, name: str | None = None
) -> Conv:
    """A Conv carrying the enclosing module's init / conv_impl / precision settings."""
    return Conv(features, k, stride, padding, use_bias, m.conv_impl, m.weight_init, precision=m.precision, name=name)


def _flatten(x: jax.Array) -> jax.Array:
    """[B, ...] -> [B, D] (NHWC order); explicit D so that B = 0 works too."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def _classify(m: nn.Module, feats: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Flatten [B, ...] -> [B, D] and apply the final Dense: returns (features, logits)."""
    feats = _flatten(feats)
    if feats.shape[-1] == 0:  # raised while make_model traces the network
        raise errors.ConfigError(
            None, f"{type(m).__name__} reduces the image to zero features; use fewer pooling layers or a larger image"
        )
    return feats, Dense(m.num_classes, m.weight_init, m.precision, name="classifier")(feats)


def _mnist_like(x: jax.Array) -> bool:
    """28x28x1 inputs get a padding-3 first conv (28 -> 32), as in the DC code."""
    return tuple(x.shape[-3:]) == (28, 28, 1)


# ----------------------------------------------------------------------- architectures
# Each __call__(x [B,H,W,C], train) returns (features [B, D], logits [B, num_classes]).


class ConvNet(nn.Module):
    """DC's ConvNet: depth x [conv3x3 -> norm -> act -> pool2], flatten -> Dense."""

    num_classes: int
    width: int = 128
    depth: int = 3
    norm: str = "instancenorm"
    activation: str = "relu"
    pooling: str = "avgpool"
    weight_init: str = "reference"
    conv_impl: str = "im2col"
    precision: str = "fp32"

    @nn.compact
    def __call__(self, x, train: bool = False):
        first_pad = 3 if _mnist_like(x) else 1
        for d in range(self.depth):
            x = _conv(self, self.width, 3, first_pad if d == 0 else 1, name=f"conv{d}")(x)
            x = _norm(self.norm, x, train, f"norm{d}")
            x = _ACTIVATION_FNS[self.activation](x)
            x = pool2x2(x, self.pooling)
        return _classify(self, x)


class MLP(nn.Module):
    """flatten -> 128 -> ReLU -> 128 -> ReLU -> Dense."""

    num_classes: int
    weight_init: str = "reference"
    conv_impl: str = "im2col"
    precision: str = "fp32"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _flatten(x)
        x = nn.relu(Dense(128, self.weight_init, self.precision, name="fc0")(x))
        x = nn.relu(Dense(128, self.weight_init, self.precision, name="fc1")(x))
        return _classify(self, x)


class LeNet(nn.Module):
    """conv5 6 -> ReLU -> maxpool -> conv5 16 -> ReLU -> maxpool -> 120 -> 84 -> Dense."""

    num_classes: int
    weight_init: str = "reference"
    conv_impl: str = "im2col"
    precision: str = "fp32"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = pool2x2(nn.relu(_conv(self, 6, 5, 2 if x.shape[-1] == 1 else 0, name="conv0")(x)), "maxpool")
        x = pool2x2(nn.relu(_conv(self, 16, 5, 0, name="conv1")(x)), "maxpool")
        x = _flatten(x)
        x = nn.relu(Dense(120, self.weight_init, self.precision, name="fc0")(x))
        x = nn.relu(Dense(84, self.weight_init, self.precision, name="fc1")(x))
        return _classify(self, x)


class AlexNet(nn.Module):
    """DC's AlexNet: 5 convs 128/192/256/192/192 (3 max-pools), flatten -> Dense."""

    num_classes: int
    norm: str = "none"  # "batchnorm" for alexnet_bn
    weight_init: str = "reference"
    conv_impl: str = "im2col"
    precision: str = "fp32"

    @nn.compact
    def __call__(self, x, train: bool = False):
        first_pad = 4 if x.shape[-1] == 1 else 2
        # (channels, kernel, padding, max-pool after?)
        cfg = [(128, 5, first_pad, True), (192, 5, 2, True), (256, 3, 1, False), (192, 3, 1, False), (192, 3, 1, True)]
        for i, (c, k, p, pool) in enumerate(cfg):
            x = _norm(self.norm, _conv(self, c, k, p, name=f"conv{i}")(x), train, f"norm{i}")
            x = nn.relu(x)
            x = pool2x2(x, "maxpool") if pool else x
        return _classify(self, x)


_VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """VGG11 with conv3x3 -> norm -> ReLU blocks (instance norm by default), flatten -> Dense."""

    num_classes: int
    norm: str = "instancenorm"
    weight_init: str = "reference"
    conv_impl: str = "im2col"
    precision: str = "fp32"

    @nn.compact
    def __call__(self, x, train: bool = False):
        pad, i = (3 if _mnist_like(x) else 1), 0
        for v in _VGG11_CFG:
            if v == "M":
                x = pool2x2(x, "maxpool")
                continue
            x = _conv(self, int(v), 3, pad, name=f"conv{i}")(x)
            x = nn.relu(_norm(self.norm, x, train, f"norm{i}"))
            pad, i = 1, i + 1
        return _classify(self, x)


class BasicBlock(nn.Module):
    """ResNet basic block: [B,H,W,Cin] -> [B,ceil(H/stride),ceil(W/stride),features].

    Convs have no bias (as in the DC / torchvision code: the norm right after absorbs it).
    """

    features: int
    stride: int = 1
    norm: str = "instancenorm"
    weight_init: str = "reference"
    conv_impl: str = "im2col"
    precision: str = "fp32"

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = _conv(self, self.features, 3, 1, self.stride, use_bias=False, name="conv0")(x)
        y = nn.relu(_norm(self.norm, y, train, "norm0"))
        y = _conv(self, self.features, 3, 1, use_bias=False, name="conv1")(y)
        y = _norm(self.norm, y, train, "norm1")
        if self.stride != 1 or x.shape[-1] != self.features:
            x = _conv(self, self.features, 1, 0, self.stride, use_bias=False, name="shortcut")(x)
            x = _norm(self.norm, x, train, "shortcut_norm")
        return nn.relu(y + x)


class ResNet18(nn.Module):
    """Stem conv3x3 64 -> 4 stages x 2 BasicBlocks (64/128/256/512) -> global avg pool -> Dense."""

    num_classes: int
    norm: str = "instancenorm"
    weight_init: str = "reference"
    conv_impl: str = "im2col"
    precision: str = "fp32"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _conv(self, 64, 3, 1, use_bias=False, name="stem")(x)
        x = nn.relu(_norm(self.norm, x, train, "stem_norm"))
        for stage, (features, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
            for j in range(2):
                x = BasicBlock(
                    features,
                    stride=stride if j == 0 else 1,
                    norm=self.norm,
                    weight_init=self.weight_init,
                    conv_impl=self.conv_impl,
                    precision=self.precision,
                    name=f"layer{stage + 1}_{j}",
                )(x, train)
        return _classify(self, x.mean(axis=(-3, -2)))


# ------------------------------------------------------------------------ construction


def _check(value: Any, valid: tuple, what: str) -> None:
    """Raise a one-line ConfigError naming the bad value and the valid choices."""
    if value not in valid:
        raise errors.ConfigError(None, f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _validate(config: ModelConfig, image_shape: tuple, num_classes: int) -> None:
    """Check every config field (whether or not the chosen architecture uses it)."""
    _check(config.name, MODEL_NAMES, "model name")
    _check(config.norm, NORMS, "norm")
    _check(config.activation, ACTIVATIONS, "activation")
    _check(config.pooling, POOLINGS, "pooling")
    _check(config.init, INITS, "init")
    _check(config.conv_impl, CONV_IMPLS + (FORWARD_IMPL,), "conv_impl")
    _check(config.precision, PRECISIONS, "precision")
    for field in ("width", "depth"):
        value = getattr(config, field)
        if not isinstance(value, numbers.Integral) or value < 1:
            raise errors.ConfigError(None, f"bad {field} {value!r}; must be a positive int")
    if len(tuple(image_shape)) != 3:
        raise ValueError(f"bad image_shape {image_shape!r}; expected (H, W, C)")
    if not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"bad num_classes {num_classes!r}; must be a positive int")


def _build_module(config: ModelConfig, num_classes: int) -> nn.Module:
    """The flax Module for ``config`` (already validated)."""
    base, bn = config.name.removesuffix("_bn"), config.name.endswith("_bn")
    common: dict[str, Any] = dict(
        num_classes=int(num_classes), weight_init=config.init, conv_impl=config.conv_impl, precision=config.precision
    )
    if base == "convnet":
        return ConvNet(
            width=int(config.width),
            depth=int(config.depth),
            norm="batchnorm" if bn else config.norm,
            activation=config.activation,
            pooling=config.pooling,
            **common,
        )
    if base == "mlp":
        return MLP(**common)
    if base == "lenet":
        return LeNet(**common)
    if base == "alexnet":
        return AlexNet(norm="batchnorm" if bn else "none", **common)
    cls = VGG11 if base == "vgg11" else ResNet18
    return cls(norm="batchnorm" if bn else "instancenorm", **common)


def _init_fn(module: nn.Module, config: ModelConfig, image_shape: tuple[int, int, int]) -> Callable:
    """key -> variables of ``module`` for images (H, W, C) = ``image_shape``, with ``config.init``'s layers."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)

    # Jitted so XLA drops the dummy forward pass flax runs to infer shapes. module.init's
    # only random draws (Conv/Dense kernels and biases) are all replaced by _redraw_layers,
    # so reusing `key` there correlates nothing and saves compiling a split.
    @jax.jit
    def init(key):
        variables = dict(module.init(key, dummy, train=False))
        variables["params"] = _redraw_layers(key, variables["params"], config.init)
        return variables

    return init


def _apply_fns(module: nn.Module, has_batch_stats: bool) -> tuple[Callable, Callable, Callable]:
    """(apply, embed, apply_train) of ``module``: logits [B, K], features [B, D], and (logits, updated variables)."""

    def apply(variables, x):
        return module.apply(variables, x, train=False)[1]

    def embed(variables, x):
        return module.apply(variables, x, train=False)[0]

    def apply_train(variables, x):
        if not has_batch_stats:  # no train-mode behaviour (no dropout in the zoo)
            return apply(variables, x), variables
        (_, logits), updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
        return logits, {**variables, "batch_stats": updates["batch_stats"]}

    return apply, embed, apply_train


def make_model(config: ModelConfig, image_shape: tuple[int, int, int], num_classes: int) -> ModelFns:
    """Build the pure functions of ``config`` for images ``image_shape`` = (H, W, C).

    Raises ConfigError eagerly on any bad config value or on a network that shrinks the
    image to nothing (e.g. too many pools for the image size). ``init`` is jitted (its
    dummy forward pass is then dead code); the other functions are left for callers to
    jit / vmap / grad as they need.
    """
    _validate(config, image_shape, num_classes)
    module = _build_module(config, num_classes)
    init = _init_fn(module, config, image_shape)
    shapes = jax.eval_shape(init, jax.random.key(0))  # traces the network: shape errors here
    has_batch_stats = "batch_stats" in shapes
    apply, embed, apply_train = _apply_fns(module, has_batch_stats)
    return ModelFns(
        init=init,
        apply=apply,
        apply_train=apply_train,
        embed=embed,
        has_batch_stats=has_batch_stats,
        num_params=count_params(shapes["params"]),
        config=config,
        image_shape=(int(image_shape[0]), int(image_shape[1]), int(image_shape[2])),
        num_classes=int(num_classes),
    )


def with_precision(fns: ModelFns, precision: str) -> ModelFns:
    """The same network (same parameter tree, same init) with its matmuls at ``precision`` (PRECISIONS)."""
    if fns.config is None or fns.image_shape is None or fns.num_classes is None:
        raise ValueError("with_precision needs a network built by make_model")
    if fns.config.precision == precision:
        return fns
    return make_model(dataclasses.replace(fns.config, precision=precision), fns.image_shape, fns.num_classes)


def forward_impl(config: ModelConfig, backend: str | None = None) -> str:
    """The conv lowering of passes no gradient flows through (scoring, evaluation, DM's real embeddings): the one
    place this per-backend choice is made.

    On XLA:CPU an im2col network's forward runs faster in ``FORWARD_IMPL`` (lax.conv, whose patches stay in cache,
    fused by XLA with the norm before it; a direct first layer): ConvNet forward on 2,560 MNIST images in chunks of
    8, 2-core Xeon: width 32 1.8x, width 64 1.9x, width 128 1.2x (docs/SPEED.md). Its gradient is ~9x slower than
    im2col's, so training keeps ``config.conv_impl``. Elsewhere (GPU/TPU: not measured) nothing changes.
    """
    on_cpu = (backend or jax.default_backend()) == "cpu"
    return FORWARD_IMPL if on_cpu and config.conv_impl == "im2col" else config.conv_impl


# Images per forward-only chunk on XLA:CPU: small enough that a chunk's activations stay in cache (a whole batch of
# 1,000 runs ~4x slower at width 32); 8-40 measured alike (docs/SPEED.md).
CPU_FORWARD_CHUNK = 32


def forward_chunk(config: ModelConfig | None, backend: str | None = None) -> int:
    """Images per chunk of a forward-only pass (``forward_impl``'s lowering); 0: the whole batch at once."""
    on_cpu = (backend or jax.default_backend()) == "cpu"
    return CPU_FORWARD_CHUNK if on_cpu and config is not None and config.conv_impl == "im2col" else 0


def forward_only(fns: ModelFns, backend: str | None = None) -> ModelFns:
    """The same network (same parameter tree and init) in ``forward_impl``'s lowering; never differentiate it.

    Returns ``fns`` itself when the lowering does not change or ``fns`` was not built by ``make_model``; otherwise
    one cached ModelFns per network, so jitted callers that take it as a static argument compile once.
    """
    if fns.config is None or fns.image_shape is None or fns.num_classes is None:
        return fns
    impl = forward_impl(fns.config, backend)
    if impl == fns.config.conv_impl:
        return fns
    return _forward_model(dataclasses.replace(fns.config, conv_impl=impl), fns.image_shape, fns.num_classes)


@functools.lru_cache(maxsize=64)
def _forward_model(config: ModelConfig, image_shape: tuple[int, int, int], num_classes: int) -> ModelFns:
    return make_model(config, image_shape, num_classes)


def lowering(config: ModelConfig, backend: str | None = None) -> dict:
    """The per-backend lowering choices a run made for ``config`` (recorded in its results): the conv lowering of
    passes that are differentiated, of forward-only passes, and the forward-only chunk (0: whole batches)."""
    return {
        "conv_impl": config.conv_impl,
        "forward_impl": forward_impl(config, backend),
        "forward_chunk": forward_chunk(config, backend),
    }
