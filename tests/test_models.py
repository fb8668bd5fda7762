"""Tests for dcjax.models: architectures, init, conv implementations, BatchNorm state."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcjax import models
from dcjax.models import MODEL_NAMES, ModelConfig, count_params, make_model

MNIST, CIFAR = (28, 28, 1), (32, 32, 3)
# Classifier input sizes of each architecture for both image shapes (docs/protocol.md section 2).
EMBED_DIMS = {"convnet": 2048, "mlp": 128, "lenet": 84, "alexnet": 3072, "vgg11": 512, "resnet18": 512}


@functools.cache
def _model(shape=MNIST, classes=10, **cfg):
    """make_model, cached so tests sharing a config share its jit compilations."""
    return make_model(ModelConfig(**cfg), shape, classes)


def _normal(*shape, seed=0):
    """Test data from numpy: a jax.random draw would compile a new kernel per shape."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _images(n, shape=MNIST, seed=0):
    return _normal(n, *shape, seed=seed)


def _ce(logits, labels):
    """Mean softmax cross-entropy; [B, K], [B] -> scalar."""
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))


def _assert_close_rel(a, b, tol=1e-4):
    """Every leaf pair agrees to tol relative to the leaf's largest magnitude.

    Leaves that are ~0 in exact arithmetic (e.g. the gradient of a conv bias that a norm
    removes) are pure rounding noise, of order float32 eps times the tree's largest value,
    so the scale is floored at 1e-2 of the tree's largest. (At 1e-3 the floor sat within 1.3x
    of that noise and failed on another CPU: 8.7e-8 against 6.7e-8.)
    """
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(a) == len(b)
    floor = 1e-2 * max(float(np.abs(y).max()) for y in b)
    for x, y in zip(a, b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape
        scale = max(float(np.abs(y).max()), floor, 1e-30)
        assert float(np.abs(x - y).max()) <= tol * scale, (float(np.abs(x - y).max()), scale)


def _layers(params):
    """Every dict holding a 'kernel' (a Conv or Dense layer), anywhere in params."""
    if "kernel" in params:
        return [params]
    return [layer for v in params.values() if isinstance(v, dict) for layer in _layers(v)]


# --------------------------------------------------------------------------- shapes


@pytest.mark.slow
def test_mnist_convnet_params_and_shapes():
    m = _model()
    variables = m.init(jax.random.key(0))
    assert m.num_params == 317_706 == count_params(variables["params"])
    assert set(variables) == {"params"} and not m.has_batch_stats
    x = _images(3)
    logits, feats = jax.jit(lambda v, x: (m.apply(v, x), m.embed(v, x)))(variables, x)
    chex.assert_shape(logits, (3, 10))
    chex.assert_shape(feats, (3, 2048))
    # embed is exactly the classifier's input.
    head = variables["params"]["classifier"]
    np.testing.assert_allclose(feats @ head["kernel"] + head["bias"], logits, rtol=1e-5, atol=1e-5)


def test_cifar_convnet_shapes():
    m = make_model(ModelConfig(), CIFAR, 100)
    variables = m.init(jax.random.key(0))
    assert m.num_params == count_params(variables["params"]) == 320_010 + 2048 * 90 + 90
    logits, feats = jax.jit(lambda v, x: (m.apply(v, x), m.embed(v, x)))(variables, _images(2, CIFAR))
    chex.assert_shape(logits, (2, 100))
    chex.assert_shape(feats, (2, 2048))


def _init_apply_embed(m, key, x):
    variables = m.init(key)
    return variables, m.apply(variables, x), m.embed(variables, x)


@pytest.mark.parametrize("shape", [MNIST, CIFAR], ids=["mnist", "cifar"])
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.slow
def test_every_model_builds_and_runs(name, shape):
    """MNIST shapes are run (compiled, ~1 s each); CIFAR ones are traced (jax.eval_shape)."""
    # conv_impl="lax" only because it compiles ~2x faster; im2col == lax is tested below.
    m = make_model(ModelConfig(name=name, conv_impl="lax"), shape, 7)
    run = functools.partial(_init_apply_embed, m)
    run = jax.jit(run) if shape == MNIST else functools.partial(jax.eval_shape, run)
    variables, logits, feats = run(jax.random.key(1), _images(2, shape))
    chex.assert_shape(logits, (2, 7))
    chex.assert_shape(feats, (2, EMBED_DIMS[name.removesuffix("_bn")]))
    if shape == MNIST:
        chex.assert_tree_all_finite(logits)
    assert m.has_batch_stats == name.endswith("_bn") == ("batch_stats" in variables)
    assert m.num_params == count_params(variables["params"])


# ----------------------------------------------------------------------------- init


def test_init_is_deterministic_per_key():
    m = _model()
    chex.assert_trees_all_equal(m.init(jax.random.key(3)), m.init(jax.random.key(3)))
    a, b = m.init(jax.random.key(3)), m.init(jax.random.key(4))
    for layer_a, layer_b in zip(_layers(a["params"]), _layers(b["params"])):
        assert not np.array_equal(layer_a["kernel"], layer_b["kernel"])
    # Old-style uint32 keys work too.
    chex.assert_trees_all_equal_shapes(m.init(jax.random.PRNGKey(0)), a)


def test_reference_init_matches_pytorch_default():
    params = _model().init(jax.random.key(0))["params"]
    for layer in _layers(params):
        bound = 1 / math.sqrt(math.prod(layer["kernel"].shape[:-1]))
        for leaf in (layer["kernel"], layer["bias"]):
            assert float(jnp.abs(leaf).max()) <= bound
            assert float(jnp.abs(leaf).max()) > 0.9 * bound  # actually spans the range
    big = params["conv1"]["kernel"]  # 3*3*128*128 = 147,456 draws
    bound = 1 / math.sqrt(3 * 3 * 128)
    assert abs(float(big.std()) / (bound / math.sqrt(3)) - 1) < 0.02
    assert abs(float(big.mean())) < 0.01 * bound
    for d in range(3):  # instance norm: scale 1, bias 0
        np.testing.assert_array_equal(params[f"norm{d}"]["scale"], 1.0)
        np.testing.assert_array_equal(params[f"norm{d}"]["bias"], 0.0)


def test_flax_init_scheme():
    params = _model(init="flax").init(jax.random.key(0))["params"]
    for layer in _layers(params):
        np.testing.assert_array_equal(layer["bias"], 0.0)
    big = params["conv1"]["kernel"]
    assert abs(float(big.std()) * math.sqrt(3 * 3 * 128) - 1) < 0.02  # lecun normal
    assert float(jnp.abs(big).max()) <= 2 / 0.8796256610342398 / math.sqrt(3 * 3 * 128) + 1e-6


@pytest.mark.parametrize("scheme", ["reference", "flax"])
@pytest.mark.slow
def test_layer_initializers_match_fast_init(scheme):
    """The modules' own initializers (standalone use) draw what make_model's init draws."""
    x = jnp.zeros((1, 8, 8, 64))
    conv = jax.jit(models.Conv(256, 3, padding=1, weight_init=scheme).init)(jax.random.key(0), x)
    kernel = conv["params"]["kernel"]
    chex.assert_shape(kernel, (3, 3, 64, 256))
    fan_in = 3 * 3 * 64
    expected_std = 1 / math.sqrt(3 * fan_in) if scheme == "reference" else 1 / math.sqrt(fan_in)
    assert abs(float(kernel.std()) / expected_std - 1) < 0.02
    dense = jax.jit(models.Dense(5, weight_init=scheme).init)(jax.random.key(0), jnp.zeros((1, 100)))
    bias = dense["params"]["bias"]
    if scheme == "reference":
        assert 0 < float(jnp.abs(bias).max()) <= 0.1
    else:
        np.testing.assert_array_equal(bias, 0.0)


# ----------------------------------------------------------------- im2col vs lax.conv


@pytest.mark.parametrize("k,stride,padding,size", [(3, 1, 3, 7), (3, 2, 1, 9), (1, 2, 0, 8), (5, 1, 4, 6)])
@pytest.mark.slow
def test_conv_im2col_matches_lax(k, stride, padding, size):
    x = _images(2, (size, size, 3))
    kernel = _normal(k, k, 3, 4, seed=1)

    @functools.partial(jax.jit, static_argnums=0)
    def value_and_grads(conv, x, w):
        f = lambda x, w: jnp.sum(jnp.sin(conv(x, w, stride, padding)))
        return conv(x, w, stride, padding), jax.grad(f, (0, 1))(x, w)

    _assert_close_rel(*[value_and_grads(conv, x, kernel) for conv in (models.conv_im2col, models.conv_lax)], tol=1e-5)


def _value_and_grads(apply, variables, x, labels):
    """(logits, d CE / d params, d CE / d x) for one model."""

    def loss(params, x):
        return _ce(apply({**variables, "params": params}, x), labels)

    grads = jax.grad(loss, (0, 1))(variables["params"], x)
    return apply(variables, x), grads


@pytest.mark.slow
def test_im2col_matches_lax_convnet():
    x, labels = _images(4), jnp.arange(4) % 10
    variables = _model().init(jax.random.key(0))
    out = [
        jax.jit(_value_and_grads, static_argnums=0)(_model(conv_impl=impl).apply, variables, x, labels)
        for impl in ("im2col", "lax")
    ]
    _assert_close_rel(*out)


def _block(impl):
    return models.BasicBlock(16, stride=2, conv_impl=impl)


@pytest.mark.slow
def test_im2col_matches_lax_resnet_stride2_block():
    x = _images(2, (9, 9, 8))
    variables = jax.jit(_block("im2col").init)(jax.random.key(0), x)
    assert "shortcut" in variables["params"]  # shape changes -> projection shortcut
    chex.assert_shape(jax.eval_shape(_block("lax").apply, variables, x), (2, 5, 5, 16))

    def value_and_grads(impl, variables, x):
        f = lambda p, x: jnp.sum(jnp.tanh(_block(impl).apply({"params": p}, x)))
        return f(variables["params"], x), jax.grad(f, (0, 1))(variables["params"], x)

    out = [jax.jit(value_and_grads, static_argnums=0)(impl, variables, x) for impl in ("im2col", "lax")]
    _assert_close_rel(*out)


@pytest.mark.slow
def test_im2col_matches_lax_under_vmap_over_param_sets():
    """A bank of 2 models, each with its own batch: vmap(im2col) == vmap(lax)."""
    fns = {impl: _model(width=32, conv_impl=impl) for impl in ("im2col", "lax")}
    stacked = jax.vmap(fns["lax"].init)(jax.random.split(jax.random.key(0), 2))
    xs, labels = _images(6).reshape(2, 3, *MNIST), (jnp.arange(6) % 10).reshape(2, 3)
    out = {
        impl: jax.jit(jax.vmap(functools.partial(_value_and_grads, f.apply)))(stacked, xs, labels)
        for impl, f in fns.items()
    }
    _assert_close_rel(out["im2col"], out["lax"])
    # Each model really used its own parameters and batch.
    assert not np.allclose(out["lax"][0][0], out["lax"][0][1])


# ------------------------------------------------------------------------ BatchNorm


@pytest.mark.slow
def test_batchnorm_train_updates_stats_and_eval_is_pure():
    m = _model(name="convnet_bn", width=16)
    variables, x = m.init(jax.random.key(0)), _images(8)
    assert m.has_batch_stats and set(variables) == {"params", "batch_stats"}
    logits, new = jax.jit(m.apply_train)(variables, x)
    chex.assert_shape(logits, (8, 10))
    chex.assert_trees_all_equal(new["params"], variables["params"])
    chex.assert_trees_all_equal_structs(new["batch_stats"], variables["batch_stats"])
    # Running stats move by torch momentum 0.1: new = 0.9 * old + 0.1 * batch statistic.
    p = variables["params"]["conv0"]
    y = models.conv_lax(x, p["kernel"], 1, 3) + p["bias"]
    stats = new["batch_stats"]["norm0"]
    np.testing.assert_allclose(stats["mean"], 0.1 * y.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * y.var((0, 1, 2)), rtol=1e-4)
    # Eval mode uses (and leaves) the running stats; same input -> same output.
    apply = jax.jit(m.apply)
    chex.assert_trees_all_equal(apply(new, x), apply(new, x))
    assert not np.allclose(apply(new, x), apply(variables, x))
    # Train mode normalises with batch stats, so one example's logits depend on the others.
    other = jax.jit(m.apply_train)(variables, x.at[4:].set(_images(4, seed=1)))[0]
    assert not np.allclose(logits[:4], other[:4], atol=1e-4)


@pytest.mark.slow
def test_batchnorm_apply_train_under_vmap_over_models():
    """A bank of BN models trained side by side keeps one set of running stats per model."""
    m = _model(name="convnet_bn", width=8, depth=1)
    stacked = jax.vmap(m.init)(jax.random.split(jax.random.key(0), 2))
    xs = _images(4).reshape(2, 2, *MNIST)
    logits, new = jax.jit(jax.vmap(m.apply_train))(stacked, xs)
    chex.assert_shape(logits, (2, 2, 10))
    for i in range(2):
        one = jax.tree.map(lambda a, i=i: a[i], stacked)
        single_logits, single = jax.jit(m.apply_train)(one, xs[i])
        _assert_close_rel((single_logits, single), jax.tree.map(lambda a, i=i: a[i], (logits, new)))


def test_apply_train_without_batchnorm_is_apply():
    m = _model()
    variables, x = m.init(jax.random.key(0)), _images(2)
    logits, out = jax.jit(m.apply_train)(variables, x)
    chex.assert_trees_all_equal(out, variables)
    np.testing.assert_allclose(logits, jax.jit(m.apply)(variables, x), rtol=1e-6)


# ------------------------------------------------------------------ ConvNet variants

_NORMS, _ACTS, _POOLS = models.NORMS, models.ACTIVATIONS, models.POOLINGS
# A covering set: every norm, activation, pooling and depth 1..4 appears in a run.
_VARIANTS = [(_NORMS[i % 5], _ACTS[i % 4], _POOLS[i % 3], 1 + i % 4) for i in range(6)]


@pytest.mark.parametrize("norm,activation,pooling,depth", _VARIANTS)
@pytest.mark.slow
def test_convnet_variant_runs(norm, activation, pooling, depth):
    m = _model(width=32, depth=depth, norm=norm, activation=activation, pooling=pooling, conv_impl="lax")
    variables = m.init(jax.random.key(0))
    logits, _ = jax.jit(m.apply_train)(variables, _images(2))
    chex.assert_shape(logits, (2, 10))
    chex.assert_tree_all_finite(logits)
    side = 32 // 2**depth if pooling != "none" else 32
    assert m.num_params == count_params(variables["params"])
    chex.assert_shape(variables["params"]["classifier"]["kernel"], (side * side * 32, 10))


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("pooling", _POOLS)
@pytest.mark.parametrize("norm", _NORMS)
@pytest.mark.slow
def test_convnet_variant_shapes(norm, pooling, depth):
    """Every norm x pooling x depth traces (shapes only: no compile)."""
    m = make_model(ModelConfig(width=32, depth=depth, norm=norm, pooling=pooling), MNIST, 10)
    variables = jax.eval_shape(m.init, jax.random.key(0))
    side = 32 // 2**depth if pooling != "none" else 32
    chex.assert_shape(jax.eval_shape(m.embed, variables, _images(2)), (2, side * side * 32))
    if norm == "layernorm":  # torch LayerNorm([C, H, W]): elementwise affine per position
        chex.assert_shape(variables["params"]["norm0"]["scale"], (32, 32, 32))
    assert ("batch_stats" in variables) == (norm == "batchnorm") == m.has_batch_stats


# ------------------------------------------------------------------------ bad config


@pytest.mark.parametrize(
    "field,value",
    [
        ("name", "resnet50"),
        ("norm", "weightnorm"),
        ("activation", "gelu"),
        ("pooling", "avg"),
        ("init", "kaiming"),
        ("conv_impl", "winograd"),
        ("width", 0),
        ("depth", -1),
    ],
)
def test_bad_config_raises(field, value):
    with pytest.raises(ValueError, match=repr(value)):
        make_model(ModelConfig(**{field: value}), MNIST, 10)


def test_bad_config_message_lists_valid_values():
    with pytest.raises(ValueError, match="convnet, mlp, lenet"):
        make_model(ModelConfig(name="resnet50"), MNIST, 10)


def test_too_many_pools_for_image_raises():
    with pytest.raises(ValueError, match="zero features"):
        make_model(ModelConfig(depth=6), MNIST, 10)


def test_count_params():
    assert count_params({"a": jnp.zeros((3, 4)), "b": [jnp.zeros(5), jnp.zeros(())]}) == 18


@pytest.mark.parametrize("size", [pytest.param(28, marks=pytest.mark.slow), 7])  # 28: ~6 s of compiling.
def test_instance_norm_matches_groupnorm_with_one_channel_per_group(size):
    import flax.linen as nn

    key1, key2, key3 = jax.random.split(jax.random.key(0), 3)
    x = 3.0 * jax.random.normal(key1, (2, size, size, 16)) + 1.0  # Un-centred: the two-pass variance matters.
    ours = models.InstanceNorm()
    variables = ours.init(key2, x)
    variables = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(key3, p.shape), variables)
    reference = nn.GroupNorm(num_groups=16, epsilon=1e-5, use_fast_variance=False)
    chex.assert_trees_all_equal_shapes(variables, reference.init(key2, x))  # Same parameters: checkpoints carry over.
    chex.assert_trees_all_close(ours.apply(variables, x), reference.apply(variables, x), atol=1e-5, rtol=1e-5)
    loss = lambda m: lambda v, y: jnp.sum(jnp.sin(m.apply(v, y)))  # noqa: E731
    chex.assert_trees_all_close(
        jax.grad(loss(ours), argnums=(0, 1))(variables, x),
        jax.grad(loss(reference), argnums=(0, 1))(variables, x),
        atol=1e-4,
        rtol=1e-4,
    )


@pytest.mark.slow  # ~6 s of compiling.
def test_with_precision_keeps_the_parameters_and_rounds_only_matmul_inputs():
    fp32 = make_model(ModelConfig(width=8, depth=2), (12, 12, 1), 4)
    bf16 = models.with_precision(fp32, "bf16")
    assert bf16.config.precision == "bf16" and models.with_precision(fp32, "fp32") is fp32
    variables = fp32.init(jax.random.key(0))
    chex.assert_trees_all_equal(bf16.init(jax.random.key(0)), variables)  # Same tree, same init.
    x = jax.random.normal(jax.random.key(1), (3, 12, 12, 1))
    logits, low = fp32.apply(variables, x), bf16.apply(variables, x)
    assert low.dtype == jnp.float32 and not np.array_equal(low, logits)
    np.testing.assert_allclose(low, logits, rtol=0.05, atol=0.02)
    with pytest.raises(ValueError, match="precision"):
        make_model(ModelConfig(precision="fp16"), (12, 12, 1), 4)


# ------------------------------------------------------------------ forward-only lowering


@pytest.mark.parametrize("k,stride,padding,size", [(3, 1, 3, 7), (3, 2, 1, 9), (5, 1, 0, 8)])
def test_conv_direct_matches_im2col_on_single_channel_inputs(k, stride, padding, size):
    x, kernel = _images(2, (size, size, 1)), _normal(k, k, 1, 4, seed=1)
    direct = models.conv_direct(x, kernel, stride, padding)
    chex.assert_shape(direct, models.conv_im2col(x, kernel, stride, padding).shape)
    _assert_close_rel(direct, models.conv_im2col(x, kernel, stride, padding), tol=1e-5)
    with pytest.raises(ValueError, match="single-channel"):
        models.conv_direct(_images(1, (size, size, 3)), _normal(k, k, 3, 4), stride, padding)


def test_forward_lowering_is_chosen_per_backend_and_conv_impl():
    im2col, lax_net = ModelConfig(), ModelConfig(conv_impl="lax")
    assert models.forward_impl(im2col, "cpu") == models.FORWARD_IMPL
    assert models.forward_impl(im2col, "gpu") == "im2col" and models.forward_impl(lax_net, "cpu") == "lax"
    assert models.forward_chunk(im2col, "cpu") == models.CPU_FORWARD_CHUNK
    assert models.forward_chunk(im2col, "tpu") == 0 and models.forward_chunk(lax_net, "cpu") == 0


def test_forward_only_is_the_same_network_in_another_lowering():
    """Same parameters, logits and embeddings to float rounding (first layer direct, the rest lax.conv); one
    cached ModelFns per network so jitted callers compile once; unchanged where the lowering does not change."""
    fns = _model(width=8, depth=2)
    fwd = models.forward_only(fns, "cpu")
    assert fwd.config.conv_impl == models.FORWARD_IMPL and models.forward_only(fns, "cpu") is fwd
    assert models.forward_only(fns, "gpu") is fns
    variables, x = fns.init(jax.random.key(0)), _images(5)
    chex.assert_trees_all_equal_shapes(fwd.init(jax.random.key(0)), variables)
    _assert_close_rel(fwd.apply(variables, x), fns.apply(variables, x), tol=1e-5)
    _assert_close_rel(fwd.embed(variables, x), fns.embed(variables, x), tol=1e-5)
    assert not np.array_equal(fwd.embed(variables, x), fns.embed(variables, x + 1))
