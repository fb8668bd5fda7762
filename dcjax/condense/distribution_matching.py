"""Distribution Matching (DM; Zhao & Bilen, WACV 2023), one jitted iteration.

Per iteration (docs/protocol.md section 5):

  a fresh randomly initialised network, never trained (its weights are constants)
  per class c, with ONE DSA transform shared by the real and the synthetic batch (Siamese rule):
      loss += || mean embed(DSA(real_c)) - mean embed(DSA(syn_c)) ||^2
  ONE SGD-momentum step (lr_img, paper 1.0, momentum 0.5) on the synthetic images

``embed`` is the network's classifier input (``ModelFns.embed``); the real embeddings are constants. There is no
inner loop and no network training, which is why a DM iteration costs a small fraction of a DC one. The classes run
with the same per-backend strategy as DC (vmap on GPU/TPU, a sequential lax.map on CPU).

The reference DM draws one DSA seed per class from the clock; here class c of iteration t uses
fold_in(dsa_key(t), c), so runs are reproducible from the seed.
"""

from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import optax

from dcjax import chunks
from dcjax import data as data_lib
from dcjax import dsa
from dcjax import models
from dcjax.condense import distances
from dcjax.condense.config import CondenseConfig, SynState, image_optimizer
from dcjax import progress
from dcjax.models import ModelFns


def mean_embedding(fns: ModelFns, variables, images: jax.Array, chunk: int = 0) -> jax.Array:
    """Mean over images of embed(images): [n, H, W, C] -> [D].

    With chunk > 0 the forward pass runs chunk images at a time (a lax.map over zero-padded chunks, padding left out
    of the mean): on XLA:CPU small chunks keep the im2col patches in cache (see ``train.CPU_MICROBATCH``).
    """
    n = images.shape[0]
    if not chunk or chunk >= n:
        return jnp.mean(fns.embed(variables, images), axis=0)
    padded, valid = chunks.pad_to_chunks(images, chunk)
    sums = jax.lax.map(
        lambda args: jnp.sum(fns.embed(variables, args[0]) * args[1][:, None], axis=0),
        (padded, valid.astype(jnp.float32)),
    )
    return jnp.sum(sums, axis=0) / n


def _class_loss(fns: ModelFns, config: CondenseConfig, variables, pair, key, chunk: int) -> jax.Array:
    """|| mean embed(DSA(real_c)) - mean embed(DSA(syn_c)) ||^2 for one class.

    pair: (syn_c [ipc, H, W, C], real_c [n, H, W, C]), this class's images; both go through the DSA transform drawn
    from ``key``. The real embeddings are constants, so they run in the network's forward-only lowering
    (``models.forward_only``: on CPU ~1.8x faster at width 32); the synthetic ones, differentiated, in the network's
    own.
    """
    syn_c, real_c = pair
    real_c = dsa.dsa_augment(key, real_c, config.dsa_strategy, dsa.SIAMESE)
    syn_c = dsa.dsa_augment(key, syn_c, config.dsa_strategy, dsa.SIAMESE)
    real_mean = jax.lax.stop_gradient(mean_embedding(models.forward_only(fns), variables, real_c, chunk))
    return jnp.sum((real_mean - mean_embedding(fns, variables, syn_c)) ** 2)


def dm_loss(
    fns: ModelFns, config: CondenseConfig, strategy: str, syn: jax.Array, target: tuple, key: jax.Array
) -> jax.Array:
    """Sum over classes of the embedding-mean distance.

    Args:
      config: ipc, dsa_strategy and microbatch are read.
      strategy: resolved class strategy: 'vmap', 'map' or 'loop'.
      syn: [K*ipc, H, W, C] synthetic images, class-major: the argument differentiated.
      target: (variables, real): the network's variables and the real images per class [K, batch_real, H, W, C],
      whose mean embeddings the synthetic ones are matched to (constants).
      key: this iteration's DSA key; class c uses fold_in(key, c).
    """
    variables, real = target
    num_classes = real.shape[0]
    syn = syn.reshape((num_classes, config.ipc) + syn.shape[1:])
    keys = jax.vmap(functools.partial(jax.random.fold_in, key))(jnp.arange(num_classes))
    chunk = _embed_chunk(config, fns)
    per_class = lambda pair, k: _class_loss(fns, config, variables, pair, k, chunk)  # noqa: E731
    return distances.sum_over_classes(per_class, strategy, ((syn, real), keys))


def _embed_chunk(config: CondenseConfig, fns: ModelFns) -> int:
    """Real-embedding chunk size: ``config.microbatch`` if set, else the forward-only rule (``models.forward_chunk``:
    32 on CPU with im2col nets, else whole batches)."""
    if fns.has_batch_stats:
        return 0
    return models.forward_chunk(fns.config) if config.microbatch is None else config.microbatch


def dm_iteration(fns: ModelFns, config: CondenseConfig, strategy: str, state: SynState, real_data, key: jax.Array):
    """One DM iteration: (state, (pool images, ClassIndex), key) -> (state, metrics).

    state: the ``SynState`` (images [K*ipc, H, W, C], SGD-momentum state). Pure; jitted by
    ``condense.make_iteration_fn``. metrics: {"loss": the summed class losses []}.
    """
    pool, index = real_data
    net_key, real_key, dsa_key = jax.random.split(key, 3)
    variables = jax.lax.stop_gradient(fns.init(net_key))  # Frozen: only the images learn.
    real = pool[data_lib.sample_per_class(real_key, index, config.batch_real)]
    loss_fn = functools.partial(dm_loss, fns, config, strategy)
    loss, grads = jax.value_and_grad(loss_fn)(state.images, (variables, real), dsa_key)
    # The image optimizer of every method (SGD with momentum on the images), its state kept across iterations.
    updates, opt_state = image_optimizer(config).update(grads, state.opt_state, state.images)
    images = optax.apply_updates(state.images, updates)
    progress.tick(jnp.int32(0), 1, 1)  # One unit per iteration (``condense.iteration_units``).
    return state._replace(images=images, opt_state=opt_state), {"loss": loss}
