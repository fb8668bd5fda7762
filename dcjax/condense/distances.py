"""Distances between two gradient pytrees (docs/protocol.md section 3), in Flax layout.

Flax stores conv kernels as (kh, kw, in, out) and dense kernels as (in, out): the output
axis is LAST. The DC "ours" distance compares, per output unit, the vector of gradients
flowing into that unit, so rows are taken over the last axis. (Taking rows over the first
axis, as in PyTorch's (out, in, kh, kw) layout, silently computes something else.)
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp

DISTANCES = ("ours", "mse", "cos")
_EPS = 1e-6  # As in the reference implementation.


def _rows(g: jax.Array) -> jax.Array:
    """[..., out] -> [out, prod(...)]: one row per output unit."""
    return jnp.moveaxis(g, -1, 0).reshape(g.shape[-1], -1)


def layer_distance_ours(g_syn: jax.Array, g_real: jax.Array) -> jax.Array:
    """Sum over output units of (1 - cosine similarity); 0 for 1-D tensors (biases, scales)."""
    if g_syn.ndim == 1:
        return jnp.zeros((), g_syn.dtype)
    a, b = _rows(g_syn), _rows(g_real)
    dot = jnp.sum(a * b, axis=-1)
    norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return jnp.sum(1.0 - dot / (norms + _EPS))


def _flat(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def gradient_distance(g_syn, g_real, distance: str = "ours") -> jax.Array:
    """Distance between two gradient pytrees of the same structure; a scalar.

    ours: per tensor, rows over the output (last) axis, summed (1 - cos); 1-D tensors add 0.
    mse:  sum of squared differences of all entries (biases included).
    cos:  1 - cosine similarity of the two whole flattened gradients.
    """
    if distance == "ours":
        # Python's sum, not jnp.sum over a stack: it fixes the order of the additions the recorded sets came from.
        return jnp.asarray(sum(jax.tree.leaves(jax.tree.map(layer_distance_ours, g_syn, g_real))))
    if distance == "mse":
        return jnp.sum((_flat(g_syn) - _flat(g_real)) ** 2)
    if distance == "cos":
        a, b = _flat(g_syn), _flat(g_real)
        return 1.0 - jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + _EPS)
    raise ValueError(f"unknown distance {distance!r}; expected one of {DISTANCES}")


def sum_over_classes(per_class: Callable[..., jax.Array], strategy: str, xs: tuple) -> jax.Array:
    """sum_c per_class(*[x[c] for x in xs]): the class axis run as 'vmap', 'map' or 'loop'.

    xs: a tuple of arrays sharing a leading class axis [K, ...]; an entry may be a pytree of them (a (syn, real)
    pair), which per_class then gets as the same pytree of class c's slices. 'vmap' vectorises the classes (GPU/TPU);
    'map' is a sequential lax.map (one traced class body; XLA:CPU runs per-class conv gradients faster one at a time,
    docs/protocol.md section 8); 'loop' unrolls the classes in one trace. All three compute the same sum (tests check
    it).
    """
    if strategy == "vmap":
        return jnp.sum(jax.vmap(per_class)(*xs))
    if strategy == "map":
        return jnp.sum(jax.lax.map(lambda args: per_class(*args), xs))
    if strategy == "loop":
        num_classes = jax.tree.leaves(xs)[0].shape[0]
        return jnp.asarray(sum(per_class(*jax.tree.map(operator.itemgetter(c), xs)) for c in range(num_classes)))
    raise ValueError(f"unknown class strategy {strategy!r}; expected vmap, map or loop")
