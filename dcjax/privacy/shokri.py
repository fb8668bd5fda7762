"""Shokri et al. (S&P 2017, "Membership Inference Attacks Against Machine Learning Models"): the attack classifier.

Pipeline (docs/protocol.md section 7): the attacker's data is disjoint from the target's; each of k shadow models
trains on its IN half of it. Every shadow's prediction vector on an IN record is an attack-training row labelled 1 and
on an OUT record a row labelled 0. ONE binary attack classifier PER CLASS (softmax regression or a one-hidden-layer MLP)
maps the full prediction vector of a record of that class to P(member). The target is then scored on an equal
number of its members and non-members (``balanced_indices``), so chance accuracy is 50%.

Choices:
  * all per-class classifiers are trained at once: rows are grouped by class into a padded [K, m, F] block and the
    loss is vmapped over the class axis; the whole optimisation is one ``jax.jit`` (``lax.scan`` over adam steps);
  * balanced BCE: within each class IN and OUT rows get equal total weight, so unequal counts do not bias it;
  * inputs are standardised per class (weighted mean / std of that class's training rows, stored in the params and
    applied again in ``attack_scores``), so one learning rate suits both "prob" and "logprob" features;
  * explicit L2 (``weight_decay``) on the weight matrices only, not on biases or the standardisation;
  * plain pure ``jnp`` over a params dict (no flax); randomness only from the ``jax.random`` key passed in.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.special

from dcjax import errors

FEATURES = ("prob", "logprob")
# log_softmax is clipped here: below exp(-50) ~ 2e-22 the exact value carries no membership signal, and an
# unbounded feature (-1e4 for logits of 1e4) would dominate the standardisation statistics.
LOGPROB_FLOOR = 50.0
# Floor on the per-class feature std: a (near-)constant feature is centred but not blown up by 1 / ~0.
STD_FLOOR = 1e-4


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Settings of the per-class attack classifiers (hashable: it is a static argument of the jitted trainer).

    hidden: 0 = softmax (logistic) regression; > 0 = one ReLU hidden layer of this width.
    features: "prob" = softmax probabilities (Shokri / the poster); "logprob" = log_softmax clipped at
      -LOGPROB_FLOOR (more informative for confident models, whose probabilities round to 0 / 1).
    steps: full-batch adam steps.  lr: adam learning rate.  weight_decay: L2 coefficient on weight matrices.
    """

    hidden: int = 64
    features: str = "prob"
    steps: int = 2000
    lr: float = 1e-3
    weight_decay: float = 1e-4

    def __post_init__(self):
        if self.hidden < 0:
            raise errors.ConfigError("hidden", f"must be >= 0, got {self.hidden}")
        if self.features not in FEATURES:
            raise errors.ConfigError("features", f"must be one of {FEATURES}, got {self.features!r}")
        if self.steps < 1:
            raise errors.ConfigError("steps", f"must be >= 1, got {self.steps}")
        if not 0 < self.lr < np.inf:  # Also rejects NaN.
            raise errors.ConfigError("lr", f"must be > 0 and finite, got {self.lr}")
        if not 0 <= self.weight_decay < np.inf:
            raise errors.ConfigError("weight_decay", f"must be >= 0 and finite, got {self.weight_decay}")


def attack_features(logits, config: AttackConfig) -> jnp.ndarray:
    """Prediction vectors the attack sees: logits [n, K] -> float32 [n, K] (per ``config.features``).

    Computed in float32 from the logits (softmax / log_softmax subtract the max first, so logits of 1e4 are fine).
    """
    z = jnp.asarray(logits, dtype=jnp.float32)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be [n, K] with K >= 2 classes, got shape {z.shape}")
    if config.features == "prob":
        return jax.nn.softmax(z, axis=-1)
    return jnp.maximum(jax.nn.log_softmax(z, axis=-1), -LOGPROB_FLOOR)


def _dense(key: jax.Array, fan_in: int, fan_out: int, gain: float) -> dict:
    # Scaled normal init (He for ReLU with gain 2, LeCun with gain 1) keeps the initial logits O(1).
    w = jax.random.normal(key, (fan_in, fan_out), jnp.float32) * jnp.sqrt(gain / fan_in)
    return {"w": w, "b": jnp.zeros((fan_out,), jnp.float32)}


def init_attack_params(key: jax.Array, num_features: int, hidden: int) -> dict:
    """One classifier's params: {"norm": {"mean", "std"} [F], "net": {["hidden"], "out"}}.

    ``net["hidden"]`` (w [F, H], b [H]) exists only when hidden > 0; ``net["out"]`` is w [H or F, 1], b [1].
    ``norm`` starts as the identity (mean 0, std 1); ``train_attack_models`` sets it from the data.
    """
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    if hidden < 0:
        raise ValueError(f"hidden must be >= 0, got {hidden}")
    key_hidden, key_out = jax.random.split(key)
    net = {}
    if hidden:
        net["hidden"] = _dense(key_hidden, num_features, hidden, 2.0)
    net["out"] = _dense(key_out, hidden or num_features, 1, 1.0)
    norm = {"mean": jnp.zeros((num_features,), jnp.float32), "std": jnp.ones((num_features,), jnp.float32)}
    return {"norm": norm, "net": net}


def _logits(params: dict, x: jnp.ndarray) -> jnp.ndarray:
    """One classifier: x [m, F] -> membership logits [m]."""
    h = (x - params["norm"]["mean"]) / params["norm"]["std"]
    net = params["net"]
    if "hidden" in net:
        h = jax.nn.relu(h @ net["hidden"]["w"] + net["hidden"]["b"])
    return (h @ net["out"]["w"] + net["out"]["b"])[:, 0]


def _loss(net: dict, norm: dict, x, y, w, weight_decay: float) -> jnp.ndarray:
    """One class's balanced BCE (``w`` sums to 1 over its rows) plus L2 on the weight matrices."""
    bce = optax.sigmoid_binary_cross_entropy(_logits({"norm": norm, "net": net}, x), y)
    l2 = sum(jnp.sum(layer["w"] ** 2) for layer in net.values())
    return jnp.sum(w * bce) + 0.5 * weight_decay * l2


def _normaliser(x: jnp.ndarray, w: jnp.ndarray) -> dict:
    """Weighted per-feature mean / std of one class's rows x [m, F] (w [m] sums to 1; padding has weight 0)."""
    mean = w @ x
    std = jnp.sqrt(w @ (x - mean) ** 2)
    return {"mean": mean, "std": jnp.maximum(std, STD_FLOOR)}


@functools.partial(jax.jit, static_argnames="config")
def _fit(key: jax.Array, x: jnp.ndarray, y: jnp.ndarray, w: jnp.ndarray, config: AttackConfig) -> dict:
    """Trains K classifiers at once on grouped rows x [K, m, F], y [K, m], w [K, m] -> params with leading [K]."""
    num_classes, _, num_features = x.shape
    keys = jax.random.split(key, num_classes)
    params = jax.vmap(lambda k: init_attack_params(k, num_features, config.hidden))(keys)
    norm = jax.vmap(_normaliser)(x, w)
    # Summing the per-class losses keeps the classes independent: each one's gradient only sees its own term,
    # and adam is elementwise, so this equals K separate optimisations.
    per_class = jax.vmap(_loss, in_axes=(0, 0, 0, 0, 0, None))
    opt = optax.adam(config.lr)

    def total(net):
        return jnp.sum(per_class(net, norm, x, y, w, config.weight_decay))

    def step(carry, _):
        net, state = carry
        grads = jax.grad(total)(net)
        updates, state = opt.update(grads, state, net)
        return (optax.apply_updates(net, updates), state), None

    (net, _), _ = jax.lax.scan(step, (params["net"], opt.init(params["net"])), None, length=config.steps)
    return {"norm": norm, "net": net}


def _group_by_class(classes: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """classes [n] -> (idx [K, m], valid [K, m]): row indices of each class, padded with index 0 to m = max count."""
    counts = np.bincount(classes, minlength=num_classes)
    width = max(int(counts.max(initial=0)), 1)
    idx = np.zeros((num_classes, width), np.int64)
    valid = np.arange(width) < counts[:, None]
    # A stable sort keeps each class's rows in their original order.
    idx[valid] = np.argsort(classes, kind="stable")
    return idx, valid


def _check_member(member, n: int, name: str = "member") -> np.ndarray:
    m = np.asarray(member)
    if m.shape != (n,):
        raise ValueError(f"{name} must be [n] with n = {n}, got shape {m.shape}")
    if m.dtype != bool and not np.isin(m, (0, 1)).all():
        raise ValueError(f"{name} must be bool or 0 / 1")
    return m.astype(bool)


def _check_rows(features, classes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validates features [n, F] and classes [n] in [0, num_classes) -> (float32 [n, F], int64 [n])."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"features must be [n, F], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features must be finite (found NaN or inf)")
    c = np.asarray(classes)
    if c.shape != (x.shape[0],) or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"classes must be integers of shape [{x.shape[0]}], got {c.dtype} {c.shape}")
    if (c < 0).any() or (c >= num_classes).any():
        raise ValueError(f"classes must be in [0, {num_classes}) (num_classes)")
    return x, c.astype(np.int64)


def _balanced_weights(y: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """y, valid [K, m] -> weights [K, m]: each class's IN rows and OUT rows each sum to 1/2; padding gets 0."""
    num_in = np.sum(y & valid, axis=1)
    num_out = np.sum(~y & valid, axis=1)
    bad = np.flatnonzero((num_in == 0) | (num_out == 0))
    if bad.size:
        c = bad[0]
        raise ValueError(f"class {c} has {num_in[c]} IN and {num_out[c]} OUT rows; the attack needs both")
    w = np.where(y, 0.5 / num_in[:, None], 0.5 / num_out[:, None])
    return np.where(valid, w, 0.0).astype(np.float32)


def train_attack_models(key: jax.Array, features, classes, member, num_classes: int, config: AttackConfig) -> dict:
    """Trains one binary attack classifier per class on shadow-model prediction vectors.

    Args:
      key: ``jax.random`` key (initialisation); the result is a deterministic function of it and the data.
      features: [n, F] attack features (``attack_features`` of the shadow logits), usually F = num_classes.
      classes: [n] int true class of each record; row i trains classifier ``classes[i]`` only.
      member: [n] bool, True when the record was IN the training set of the shadow model that produced the row.
      num_classes: K, the number of classifiers; every class needs at least one IN and one OUT row.
      config: ``AttackConfig``.

    Returns:
      params pytree as ``init_attack_params``'s with a leading [K] axis on every leaf.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    x, c = _check_rows(features, classes, num_classes)
    m = _check_member(member, x.shape[0])
    idx, valid = _group_by_class(c, num_classes)
    y = m[idx]
    w = _balanced_weights(y, valid)
    return _fit(key, jnp.asarray(x[idx]), jnp.asarray(y, jnp.float32), jnp.asarray(w), config)


@jax.jit
def _grouped_logits(params: dict, x: jnp.ndarray) -> jnp.ndarray:
    # x [K, m, F] -> [K, m]: each class's rows through its own classifier.
    return jax.vmap(_logits)(params, x)


def attack_scores(params: dict, features, classes) -> np.ndarray:
    """Membership probabilities: each row scored by the classifier of its own class.

    Args:
      params: output of ``train_attack_models`` (leading [K] axis).
      features: [n, F] attack features, built as for training.
      classes: [n] int true class of each record, in [0, K).

    Returns:
      float64 [n] P(member). The logit is computed in float32 and squashed in float64, so confident scores stay
      ordered instead of rounding to exactly 1.
    """
    num_classes = jax.tree_util.tree_leaves(params)[0].shape[0]
    x, c = _check_rows(features, classes, num_classes)
    idx, valid = _group_by_class(c, num_classes)
    logits = np.asarray(_grouped_logits(params, jnp.asarray(x[idx])), dtype=np.float64)
    out = np.empty(x.shape[0], np.float64)
    out[idx[valid]] = logits[valid]
    return scipy.special.expit(out)


def balanced_indices(key: jax.Array, member) -> np.ndarray:
    """Indices of a balanced evaluation set: every record of the smaller side plus as many of the other side.

    Args:
      key: ``jax.random`` key choosing which records of the larger side are kept (without replacement).
      member: [n] bool (or 0 / 1), True = member.

    Returns:
      sorted int64 [2 * min(#members, #non-members)] indices into ``member``, half of them members.
    """
    if np.ndim(member) != 1:
        raise ValueError(f"member must be [n], got shape {np.shape(member)}")
    m = _check_member(member, len(member))
    pos, neg = np.flatnonzero(m), np.flatnonzero(~m)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"member needs both members and non-members, got {pos.size} and {neg.size}")
    small, large = (pos, neg) if pos.size <= neg.size else (neg, pos)
    chosen = large[np.asarray(jax.random.permutation(key, large.size))[: small.size]]
    return np.sort(np.concatenate([small, chosen])).astype(np.int64)


def attack_accuracy(scores, member, threshold: float = 0.5) -> float:
    """Fraction of correct membership decisions, predicting "member" when ``score >= threshold``.

    scores [n] and member [n] (bool or 0 / 1); on a ``balanced_indices`` set chance is 0.5.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty [n] array, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (found NaN or inf)")
    m = _check_member(member, s.size)
    return float(np.mean((s >= threshold) == m))
