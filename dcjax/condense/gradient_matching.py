"""Gradient matching: DC (Zhao, Mopuri & Bilen, ICLR 2021) and DC with DSA (Zhao & Bilen, ICML 2021).

One DC iteration (docs/protocol.md section 3) is ONE jitted function, ``dc_iteration``:

  fresh network from the iteration key
  scan over outer_loop:
    per class c: distance(grad CE(net(syn_c)), stop_gradient(grad CE(net(real_c))))
    summed over classes -> ONE SGD-momentum step on the synthetic images
    unless this is the last outer step: inner_loop epochs of plain SGD on the synthetic set

DSA (``method='dsa'``: its record's ``dsa``; docs/protocol.md section 5) changes two things: before each class's
gradients, the real and the synthetic batch go through the SAME random DSA transform (one key per class and matching
step, parameters shared by the whole batch: the Siamese rule), differentiably w.r.t. the synthetic images; and the
inner loop trains on DSA-augmented synthetic images (per-image draws), as the reference does.

The per-class matching is vectorised over classes with a per-backend strategy
(``class_strategy``, ``dcjax.strategy``): ``vmap`` on GPU/TPU; on CPU a sequential ``lax.map`` over classes
inside the same jit, because XLA's CPU backend runs a vmapped per-class gradient (a grouped
convolution) several times slower (docs/protocol.md section 8). All strategies compute the same
loss and gradients (tests check it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from dcjax import augment as augment_lib
from dcjax import data as data_lib
from dcjax import dsa
from dcjax import progress
from dcjax import train as train_lib
from dcjax.condense import distances
from dcjax.condense.config import METHODS, CondenseConfig, SynState, image_optimizer, synthetic_labels
from dcjax.models import ModelFns


def _class_gradient(fns: ModelFns, variables, images, label, microbatch: int = 0):
    """Gradient of the mean CE over images (all of class ``label``) w.r.t. params.

    images: [n, H, W, C]. With microbatch > 0 the gradient is accumulated over chunks
    (faster on CPU, see train.CPU_MICROBATCH); only for constants (the real batch), as
    the synthetic gradient must stay differentiable w.r.t. its images cheaply.
    """
    n = images.shape[0]
    labels = jnp.full((n,), label, jnp.int32)
    loss_sum = train_lib.weighted_ce_sum(fns, variables)
    weights = jnp.full((n,), 1.0 / n, jnp.float32)
    if microbatch:
        return train_lib.chunked_value_and_grad(loss_sum, variables["params"], (images, labels, weights), microbatch)[1]
    return jax.grad(loss_sum)(variables["params"], images, labels, weights)


def _class_distance(fns, config, variables, pair, label, key):
    """distance(g_syn, g_real) for one class; the real gradient is a constant.

    pair: (syn_c [ipc, H, W, C], real_c [n, H, W, C]), this class's images. With DSA both batches first go through
    the transform drawn from ``key`` (this class's key for this step).
    """
    syn_c, real_c = pair
    if METHODS[config.method].dsa:
        real_c = dsa.dsa_augment(key, real_c, config.dsa_strategy, dsa.SIAMESE)
        syn_c = dsa.dsa_augment(key, syn_c, config.dsa_strategy, dsa.SIAMESE)
    microbatch = train_lib.resolve_microbatch(config.microbatch, fns)
    g_real = jax.lax.stop_gradient(_class_gradient(fns, variables, real_c, label, microbatch))
    g_syn = _class_gradient(fns, variables, syn_c, label)
    return distances.gradient_distance(g_syn, g_real, config.distance)


def matching_loss(
    fns: ModelFns, config: CondenseConfig, strategy: str, syn: jax.Array, target: tuple, key: jax.Array
) -> jax.Array:
    """Sum over classes of the gradient distance.

    Args:
      syn: [K*ipc, H, W, C] synthetic images, class-major: the argument differentiated.
      target: (variables, real): the network's variables and the real images per class [K, batch_real, H, W, C],
      whose gradients the synthetic ones are matched to (constants).
      strategy: 'vmap' (classes vectorised), 'map' (a sequential lax.map over classes:
      one traced body) or 'loop' (classes unrolled in one trace).
      key: this matching step's DSA key (class c uses fold_in(key, c)); unused by plain DC.
    """
    variables, real = target
    num_classes = real.shape[0]
    syn = syn.reshape((num_classes, config.ipc) + syn.shape[1:])
    labels = jnp.arange(num_classes, dtype=jnp.int32)
    keys = jax.vmap(functools.partial(jax.random.fold_in, key))(labels)
    per_class = functools.partial(_class_distance, fns, config, variables)
    return distances.sum_over_classes(per_class, strategy, ((syn, real), labels, keys))


def _train_network(fns, config, variables, syn, labels, key):
    """inner_loop epochs of plain SGD (lr_net, no momentum or decay; DSA augmentation for 'dsa' only).

    syn: [K*ipc, H, W, C], already detached; labels: [K*ipc]. Returns new variables.
    The engine's own epoch loop (train.run_epochs), so the inner loop gets the same
    chunked CPU gradients and padding rules as every other training in dcjax.
    """
    schedule = train_lib.make_schedule(train_lib.TrainConfig(batch_size=config.batch_train), syn.shape[0])
    dsa_on = METHODS[config.method].dsa
    augment = dsa.training_augment(config.dsa_strategy) if dsa_on else augment_lib.identity_augment
    trainer = train_lib.Trainer(
        fns, optax.sgd(config.lr_net), augment, microbatch=train_lib.resolve_microbatch(config.microbatch, fns)
    )
    mask = jnp.ones((syn.shape[0],), bool)
    variables, _ = train_lib.run_epochs(trainer, schedule, variables, (syn, labels, mask), key, config.loops[1])
    return variables


def dc_iteration(fns: ModelFns, config: CondenseConfig, strategy: str, state: SynState, real_data, key: jax.Array):
    """One DC iteration: (state, (pool images, ClassIndex), key) -> (state, metrics).

    Pure; meant to be jitted with fns/config/strategy static and ``state`` donated
    (``make_iteration_fn``). metrics: {"loss": mean matching loss over outer steps [],
    "loss_per_outer": [outer_loop]}.
    """
    pool, index = real_data
    outer_loop, _ = config.loops
    num_classes = index.counts.shape[0]
    labels = synthetic_labels(num_classes, config.ipc)
    optimizer = image_optimizer(config)
    net_key, loop_key = jax.random.split(key)
    variables = fns.init(net_key)
    loss_fn = functools.partial(matching_loss, fns, config, strategy)

    def outer_step(carry, step):
        progress.tick(step, outer_loop, 1)  # One matching step (with its inner loop) per tick.
        syn, opt_state, variables = carry
        step_key = jax.random.fold_in(loop_key, step)
        # dsa_key is folded in, not split off, so plain DC keeps the real/train keys it always had.
        real_key, train_key = jax.random.split(step_key)
        dsa_key = jax.random.fold_in(step_key, 2)
        real = pool[data_lib.sample_per_class(real_key, index, config.batch_real)]
        loss, grads = jax.value_and_grad(loss_fn)(syn, (variables, real), dsa_key)
        updates, opt_state = optimizer.update(grads, opt_state, syn)
        syn = optax.apply_updates(syn, updates)
        # No network update after the last matching step (for ipc=1 the net is never trained).
        variables = jax.lax.cond(
            step < outer_loop - 1,
            lambda v: _train_network(fns, config, v, syn, labels, train_key),
            lambda v: v,
            variables,
        )
        return (syn, opt_state, variables), loss

    carry = (state.images, state.opt_state, variables)
    (syn, opt_state, _), losses = jax.lax.scan(outer_step, carry, jnp.arange(outer_loop))
    return SynState(syn, opt_state), {"loss": jnp.mean(losses), "loss_per_outer": losses}
