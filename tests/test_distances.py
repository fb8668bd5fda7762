"""Gradient distances against a NumPy transcription of the PyTorch-layout reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcjax.condense import distances


def _torch_layout(g):
    """Flax (kh, kw, in, out) -> PyTorch (out, in, kh, kw); (in, out) -> (out, in)."""
    if g.ndim == 4:
        return np.transpose(g, (3, 2, 0, 1))
    if g.ndim == 2:
        return g.T
    return g


def _reference_ours(gs, gr):
    """The reference distance_wb, transcribed: PyTorch layout, rows = output units."""
    shape = gr.shape
    if len(shape) == 4:
        gr, gs = gr.reshape(shape[0], -1), gs.reshape(shape[0], -1)
    elif len(shape) == 1:
        return 0.0
    dots = np.sum(gr * gs, axis=-1)
    norms = np.linalg.norm(gr, axis=-1) * np.linalg.norm(gs, axis=-1)
    return float(np.sum(1 - dots / (norms + 1e-6)))


def _random_grads(seed):
    rng = np.random.default_rng(seed)  # Test data only; the library never uses NumPy RNG.
    shapes = {
        "conv": {"kernel": (3, 3, 4, 8), "bias": (8,)},
        "dense": {"kernel": (32, 10), "bias": (10,)},
        "norm": {"scale": (8,)},
    }
    return jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes, is_leaf=lambda s: isinstance(s, tuple))


def test_ours_matches_pytorch_layout_formula():
    gs, gr = _random_grads(0), _random_grads(1)
    expected = sum(
        _reference_ours(_torch_layout(np.asarray(a)), _torch_layout(np.asarray(b)))
        for a, b in zip(jax.tree.leaves(gs), jax.tree.leaves(gr))
    )
    got = distances.gradient_distance(gs, gr, "ours")
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_ours_rows_are_over_the_last_axis():
    """Rows over the first axis (the PyTorch mistake in Flax layout) give another number."""
    gs, gr = _random_grads(2), _random_grads(3)
    k_s, k_r = gs["conv"]["kernel"], gr["conv"]["kernel"]
    wrong = _reference_ours(k_s.reshape(3, -1), k_r.reshape(3, -1))
    right = distances.layer_distance_ours(jnp.asarray(k_s), jnp.asarray(k_r))
    assert abs(float(right) - wrong) > 1e-3


def test_identical_gradients_have_zero_ours_and_cos_distance():
    g = _random_grads(4)
    assert float(distances.gradient_distance(g, g, "ours")) == pytest.approx(0.0, abs=1e-4)
    assert float(distances.gradient_distance(g, g, "cos")) == pytest.approx(0.0, abs=1e-6)
    assert float(distances.gradient_distance(g, g, "mse")) == 0.0


def test_mse_and_cos_match_flattened_formulas():
    gs, gr = _random_grads(5), _random_grads(6)
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(gs)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(gr)])
    np.testing.assert_allclose(distances.gradient_distance(gs, gr, "mse"), np.sum((a - b) ** 2), rtol=1e-5)
    cos = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-6)
    np.testing.assert_allclose(distances.gradient_distance(gs, gr, "cos"), cos, rtol=1e-5)


def test_unknown_distance_is_rejected():
    g = _random_grads(7)
    with pytest.raises(ValueError, match="bogus"):
        distances.gradient_distance(g, g, "bogus")
