"""Training one network: the reference evaluation protocol as pure, jitted steps.

docs/protocol.md section 4: SGD with momentum 0.9, weight decay 5e-4 (on every parameter, as
torch.optim.SGD applies it), lr 0.01, batch 256 shuffled, learning rate x0.1 after half of
the epochs with a *fresh* optimizer (the reference builds a new SGD there, so the momentum
buffer restarts from zero). We run the two halves as two scans, each with its own optimizer
state, which reproduces that reset exactly.

Which examples a model trains on is given by a boolean mask over a shared pool. That one
mechanism serves a full dataset (all True), a synthetic set, and the shadow bank (LiRA keep
masks): every model of a bank sees the same static shapes, so the bank can be vmapped.

``TrainConfig.dp`` trains with DP-SGD (``dcjax.dpsgd``): Poisson-sampled batches of expected
size ``batch_size`` in B_max fixed slots, per-example clipping, Gaussian noise, the sum divided
by the expected batch size, for round(epochs * n / batch_size) steps (``epochs`` are expected
passes), the lr x0.1 after half of the steps with a fresh optimizer as in the non-DP schedule.
The losses it returns are per expected epoch too. ``TrainConfig.stop_epochs`` stops such a run early, at a
checkpoint of the whole run's schedule; ``train_dp_segment`` continues a run from the state saved at an earlier
checkpoint, bitwise as if taken straight. Non-DP training does not go through any of
this: its steps are exactly those of the code before DP-SGD existed.

Deviation from the reference, on purpose: the reference runs ``E + 1`` epochs with the
decay at ``E // 2``; ``TrainConfig.epochs`` is the exact number of epochs run, with the decay
at ``epochs // 2``. Setting ``epochs=E + 1`` reproduces the reference schedule.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from dcjax import augment as augment_lib
from dcjax import chunks
from dcjax import dpsgd
from dcjax import errors
from dcjax import progress
from dcjax.models import ModelFns

Variables = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How one network is trained (defaults: docs/protocol.md section 4)."""

    epochs: int = 1000
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str = "none"  # "none" | "dc" (MNIST DC evaluation) | "dsa" | "dsa_digits" (DSA/DM evaluation)
    microbatch: int | None = None  # Gradient chunk size; None: per backend; 0: off.
    dp: dpsgd.DPConfig | None = None  # DP-SGD (clipped, noised per-example gradients); None: off.
    # DP-SGD only: stop after this many expected epochs of the ``epochs``-long run, whose schedule (lr decay at half
    # of ITS steps) it keeps: a checkpoint of that run (``train_dp_segment``). None: the whole run.
    stop_epochs: int | None = None

    def __post_init__(self):
        if self.epochs < 1:
            raise errors.ConfigError("epochs", f"must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise errors.ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        if not 0 < self.lr < math.inf:  # Also rejects NaN.
            raise errors.ConfigError("lr", f"must be > 0 and finite, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise errors.ConfigError("momentum", f"must be in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay < math.inf:
            raise errors.ConfigError("weight_decay", f"must be >= 0 and finite, got {self.weight_decay}")
        augment_lib.get_augment(self.augment)  # Fails early on an unknown name.
        if self.microbatch is not None and self.microbatch < 0:
            raise errors.ConfigError("microbatch", f"must be >= 0 or None, got {self.microbatch}")
        if self.dp is not None and not isinstance(self.dp, dpsgd.DPConfig):
            raise errors.ConfigError("dp", f"must be a dpsgd.DPConfig or None, got {self.dp!r}")
        if self.stop_epochs is not None and (self.dp is None or not 1 <= self.stop_epochs <= self.epochs):
            raise errors.ConfigError(
                "stop_epochs", f"must be in [1, epochs={self.epochs}] and needs dp, got {self.stop_epochs}"
            )


class TrainState(NamedTuple):
    """What changes during training: variables (params, batch stats) and optimizer state."""

    variables: Variables
    opt_state: Any


class Schedule(NamedTuple):
    """Static loop sizes of one training run, derived from the data before tracing."""

    steps_per_epoch: int
    batch_size: int


def make_schedule(config: TrainConfig, max_examples: int) -> Schedule:
    """Batch size and steps per epoch for at most ``max_examples`` examples per model.

    The batch never exceeds the number of examples, so a 100-image synthetic set trains in
    batches of 100 rather than 256 slots of which 156 are padding.

    With DP-SGD it checks that B_max covers ``max_examples`` (``dpsgd.check_capacity``: this
    is the one place that sees the largest private set) and returns (total Poisson steps,
    B_max): both fixed by the config, so every model of a DP bank shares one compilation.
    """
    if max_examples < 1:
        raise ValueError("a model must train on at least one example")
    if config.dp is not None:
        dpsgd.check_capacity(config.dp, config.batch_size, config.epochs, max_examples)
        _, steps, _ = dpsgd.poisson_schedule(config.dp.num_examples, config.batch_size, config.epochs)
        return Schedule(steps, config.dp.capacity)
    batch = min(config.batch_size, max_examples)
    return Schedule(math.ceil(max_examples / batch), batch)


def make_optimizer(config: TrainConfig, lr: float) -> optax.GradientTransformation:
    """torch.optim.SGD(lr, momentum, weight_decay): decay is added to the gradient first."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(lr, momentum=config.momentum or None),
    )


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean cross-entropy. logits: [B, K], labels: [B] int, weights: [B] in {0, 1}."""
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def epoch_batches(key: jax.Array, mask: jax.Array, schedule: Schedule):
    """Shuffled example indices of one epoch over the examples where ``mask`` is True.

    Args:
      key: shuffling key.
      mask: [N] bool, which pool examples this model trains on.
      schedule: static steps per epoch and batch size.

    Returns:
      indices: [steps, B] int32 into the pool; weights: [steps, B] float32, 0 for padding.
      Padding slots repeat real examples (so BatchNorm statistics only ever see real data)
      but carry zero weight in the loss.
    """
    count = jnp.sum(mask.astype(jnp.int32))
    noise = jnp.where(mask, jax.random.uniform(key, mask.shape), 2.0)
    order = jnp.argsort(noise)  # The masked-in examples first, in random order.
    positions = jnp.arange(schedule.steps_per_epoch * schedule.batch_size)
    indices = order[positions % jnp.maximum(count, 1)]
    weights = (positions < count).astype(jnp.float32)
    shape = (schedule.steps_per_epoch, schedule.batch_size)
    return indices.reshape(shape), weights.reshape(shape)


# On XLA's CPU backend a ConvNet-128 step over 256 images runs ~2x faster as 32 chunks of
# 8 whose gradients are summed (measured: 0.55 s vs 1.07 s): the im2col patches and
# activations of 8 images stay in cache instead of streaming ~0.3 GB tensors through
# memory. On GPU/TPU the whole batch at once is what keeps the chip busy.
CPU_MICROBATCH = 8


def resolve_microbatch(microbatch: int | None, fns: ModelFns, backend: str | None = None) -> int:
    """Chunk size for gradient accumulation; 0 means one pass over the whole batch.

    BatchNorm models always get 0: their batch statistics must see the whole batch. The
    automatic choice is also 0 for lax.conv networks, which chunking makes ~5x slower on
    CPU (benchmarks/engine.py): the gain comes from im2col's GEMMs staying in cache.
    """
    if fns.has_batch_stats:
        return 0
    if microbatch is None:
        uses_im2col = fns.config is None or fns.config.conv_impl == "im2col"
        on_cpu = (backend or jax.default_backend()) == "cpu"
        return CPU_MICROBATCH if on_cpu and uses_im2col else 0
    return microbatch


def weighted_ce_sum(fns: ModelFns, variables: Variables) -> Callable:
    """loss_sum(params, x [B,H,W,C], y [B], w [B]) = sum of w * CE, eval-mode forward.

    A sum over examples, so it can be chunked (``chunked_value_and_grad``); only valid for
    networks without batch statistics, whose train and eval forward passes are the same.
    """

    def loss_sum(params, x, y, w):
        logits = fns.apply({**variables, "params": params}, x)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * w)

    return loss_sum


def chunked_value_and_grad(loss_sum: Callable, params, arrays: tuple, chunk: int):
    """value_and_grad of a loss that is a SUM over examples, accumulated chunk by chunk.

    Args:
      loss_sum: loss_sum(params, *arrays_chunk) -> scalar, a sum of per-example terms.
      params: differentiated pytree.
      arrays: tuple of [B, ...] arrays. They are zero-padded to a multiple of ``chunk``:
        the caller must make padded examples contribute 0 (e.g. a weight array).
      chunk: examples per chunk (> 0).

    Returns:
      (total loss, gradient pytree), equal to jax.value_and_grad(loss_sum) on the whole
      batch up to float summation order.
    """
    per_chunk = tuple(chunks.pad_to_chunks(a, chunk)[0] for a in arrays)

    def body(carry, xs):
        loss, grads = jax.value_and_grad(loss_sum)(params, *xs)
        return (carry[0] + loss, jax.tree.map(jnp.add, carry[1], grads)), None

    init = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    return jax.lax.scan(body, init, per_chunk)[0]


class Trainer(NamedTuple):
    """The static parts of a train step: network, optimizer, augmentation, chunking."""

    fns: ModelFns
    optimizer: optax.GradientTransformation
    augment: Callable = augment_lib.identity_augment
    microbatch: int = 0  # Resolved chunk size (resolve_microbatch); 0: whole batch.
    dp: dpsgd.DPConfig | None = None  # DP-SGD gradients (chunked by ``microbatch`` too).
    dp_denominator: float = 1.0  # DP-SGD divides its noisy sum by this: the expected batch q * n.
    progress: bool = False  # Report finished steps to dcjax.progress (the engine's trainings, not inner loops).


def _loss_and_grads(trainer: Trainer, variables: Variables, images, labels, weights):
    """Weighted mean CE and its gradient; (loss, grads, variables with new batch stats)."""
    fns, params = trainer.fns, variables["params"]
    denom = jnp.maximum(jnp.sum(weights), 1.0)
    if trainer.microbatch:
        total, grads = chunked_value_and_grad(
            weighted_ce_sum(fns, variables), params, (images, labels, weights), trainer.microbatch
        )
        return total / denom, jax.tree.map(lambda g: g / denom, grads), variables

    def loss_fn(p):
        logits, new_variables = fns.apply_train({**variables, "params": p}, images)
        return cross_entropy(logits, labels, weights), new_variables

    (loss, new_variables), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, new_variables


def _dp_step(trainer: Trainer, state: TrainState, batch, key):
    """DP-SGD step on an augmented batch: noisy gradient (noise from fold_in(key, 1)), update.

    Unlike the non-DP step it updates even when no example was drawn: skipping would reveal
    that the batch was empty, and the noise-only step is what the accountant analyses.
    """
    assert trainer.dp is not None, "a DP step needs the trainer's DPConfig"
    loss, noisy_sum, _ = dpsgd.private_grad_sum(
        trainer.fns, trainer.dp, state.variables, batch, jax.random.fold_in(key, 1), trainer.microbatch
    )
    # A constant denominator (the expected batch q * n), not the number of drawn examples: a
    # data-dependent one would itself depend on whether an example is present, so one example
    # could move the released gradient by more than l2_clip / denominator.
    grads = jax.tree.map(lambda g: g / trainer.dp_denominator, noisy_sum)
    params = state.variables["params"]
    updates, opt_state = trainer.optimizer.update(grads, state.opt_state, params)
    variables = {**state.variables, "params": optax.apply_updates(params, updates)}
    return TrainState(variables, opt_state), loss


def train_step(trainer: Trainer, state: TrainState, batch, key):
    """One SGD step. batch = (images [B,H,W,C], labels [B], weights [B]) -> (state, loss).

    Without DP, a batch made only of padding (possible when models in a bank have different
    subset sizes) leaves the state untouched, as if the step did not exist. With ``trainer.dp``
    the step is DP-SGD's (``_dp_step``), augmenting with the same ``key``.
    """
    images, labels, weights = batch
    images = trainer.augment(key, images)
    if trainer.dp is not None:
        return _dp_step(trainer, state, (images, labels, weights), key)
    loss, grads, variables = _loss_and_grads(trainer, state.variables, images, labels, weights)
    params = state.variables["params"]
    updates, opt_state = trainer.optimizer.update(grads, state.opt_state, params)
    variables = {**variables, "params": optax.apply_updates(params, updates)}
    new_state = TrainState(variables, opt_state)
    has_data = jnp.sum(weights) > 0
    new_state = jax.tree.map(lambda n, o: jnp.where(has_data, n, o), new_state, state)
    return new_state, loss


def _epoch_ticks(trainer: Trainer, schedule: Schedule, num_epochs: int):
    """(on_step(step_index), on_epoch(epoch)): progress ticks of ``run_epochs``, no-ops when off.

    Short epochs report every few epochs (<= MAX_TICKS per phase), long ones (more than
    MAX_TICK_STEPS steps) from inside the step scan, so a report is never far away.
    """
    off = lambda index: None  # noqa: E731
    if not (trainer.progress and progress.enabled()):
        return off, off
    steps = schedule.steps_per_epoch
    if steps > progress.MAX_TICK_STEPS:
        return (lambda index: progress.tick(index, steps, progress.MAX_TICK_STEPS)), off
    every = progress.stride(num_epochs, progress.MAX_TICK_STEPS, steps)
    return off, (lambda epoch: progress.tick(epoch, num_epochs, every, steps))


def run_epochs(trainer: Trainer, schedule: Schedule, variables: Variables, data, key: jax.Array, num_epochs: int):
    """num_epochs epochs from ``variables`` with a fresh optimizer state (one scan).

    Args:
      trainer: network, optimizer (its lr fixed for these epochs), augmentation, chunking.
      schedule: static steps per epoch and batch size.
      variables: starting variables.
      data: (images [N,H,W,C], labels [N] int32, mask [N] bool).
      key: epoch e shuffles and augments with keys derived from fold_in(key, e).
      num_epochs: static.

    Returns:
      (variables, per-epoch mean training loss [num_epochs]). With ``trainer.progress`` the
      scans also report finished steps to ``dcjax.progress`` (values unchanged).
    """
    images, labels, mask = data
    step = functools.partial(train_step, trainer)
    on_step, on_epoch = _epoch_ticks(trainer, schedule, num_epochs)

    def one_epoch(state, epoch):
        shuffle_key, augment_key = jax.random.split(jax.random.fold_in(key, epoch))
        indices, weights = epoch_batches(shuffle_key, mask, schedule)

        def one_step(state, step_inputs):
            step_index, idx, w = step_inputs
            batch = (images[idx], labels[idx], w)
            on_step(step_index)
            return step(state, batch, jax.random.fold_in(augment_key, step_index))

        steps = jnp.arange(schedule.steps_per_epoch)
        state, losses = jax.lax.scan(one_step, state, (steps, indices, weights))
        on_epoch(epoch)
        return state, (losses, weights.sum(1))

    state = TrainState(variables, trainer.optimizer.init(variables["params"]))
    state, (losses, counts) = jax.lax.scan(one_epoch, state, jnp.arange(num_epochs))
    # The epoch means are taken here, outside the scans: inside, XLA fused the reduction differently
    # when progress ticks were traced in, and the reported loss moved by an ulp.
    return state.variables, jnp.sum(losses * counts, axis=1) / jnp.maximum(counts.sum(1), 1.0)


class PoissonPlan(NamedTuple):
    """Static sampling of a DP-SGD phase: rate q, B_max slots, steps, epochs to report losses over."""

    sample_rate: float
    capacity: int
    num_steps: int
    num_epochs: int


def _poisson_scan(trainer: Trainer, plan: PoissonPlan, state: TrainState, data, key: jax.Array, offset: int = 0):
    """``plan.num_steps`` DP-SGD steps from ``state`` (one scan), the phase's steps ``offset`` onwards.

    Step s of the phase (s >= ``offset``) samples with split(fold_in(key, s))[0] and steps with the other half: a
    function of the phase key and s alone, so a run resumed at any step draws what the straight run draws.

    Returns:
      (state, (loss * drawn examples [num_steps], drawn examples [num_steps])).
    """
    images, labels, mask = data
    step = functools.partial(train_step, trainer)
    ticks = trainer.progress and progress.enabled()
    every = progress.stride(plan.num_steps, progress.MAX_TICK_STEPS)

    def one_step(state, index):
        if ticks:
            progress.tick(index, plan.num_steps, every)
        # No add when offset is 0: the straight run's program stays the one it was before resuming existed.
        sample_key, step_key = jax.random.split(jax.random.fold_in(key, index + offset if offset else index))
        idx, w = dpsgd.poisson_batch(sample_key, mask, plan.sample_rate, plan.capacity)
        state, loss = step(state, (images[idx], labels[idx], w), step_key)
        return state, (loss * w.sum(), w.sum())

    return jax.lax.scan(one_step, state, jnp.arange(plan.num_steps))


def run_poisson_steps(trainer: Trainer, plan: PoissonPlan, variables: Variables, data, key: jax.Array):
    """``plan.num_steps`` DP-SGD steps on Poisson-sampled batches, fresh optimizer state (one scan).

    Args:
      trainer: network, optimizer (its lr fixed for these steps), augmentation, chunking, DP.
      plan: static q, B_max, number of steps and of expected epochs they span.
      variables: starting variables.
      data: (images [N,H,W,C], labels [N] int32, mask [N] bool).
      key: step s samples with split(fold_in(key, s))[0] and augments (and noises, through
        ``_dp_step``) with the other half.

    Returns:
      (variables, mean training loss of each expected epoch [num_epochs]: steps
      floor(s * num_epochs / num_steps) == e, weighted by drawn batch sizes). With
      ``trainer.progress`` the scan also reports finished steps to ``dcjax.progress``.
    """
    state = TrainState(variables, trainer.optimizer.init(variables["params"]))
    state, (sums, counts) = _poisson_scan(trainer, plan, state, data, key)
    epoch = jnp.arange(plan.num_steps) * plan.num_epochs // plan.num_steps
    per_epoch = [jax.ops.segment_sum(x, epoch, plan.num_epochs) for x in (sums, counts)]
    return state.variables, per_epoch[0] / jnp.maximum(per_epoch[1], 1.0)


def _train_dp(fns: ModelFns, config: TrainConfig, variables: Variables, data, keys, ticks: bool = False):
    """DP-SGD's two phases from ``variables``: half the steps at lr, the rest at lr / 10 (``ticks``: report)."""
    assert config.dp is not None, "DP-SGD training needs TrainConfig.dp"
    q, steps, expected = dpsgd.poisson_schedule(config.dp.num_examples, config.batch_size, config.epochs)
    augment = augment_lib.get_augment(config.augment)
    microbatch = resolve_microbatch(config.microbatch, fns)
    first, first_epochs = steps // 2, config.epochs // 2
    phases = (
        (keys[0], first, first_epochs, config.lr),
        (keys[1], steps - first, config.epochs - first_epochs, config.lr * 0.1),
    )
    losses = []
    for phase_key, num_steps, num_epochs, lr in phases:
        if not num_steps:  # One step in all: the first phase is empty, as one epoch is.
            continue
        trainer = Trainer(fns, make_optimizer(config, lr), augment, microbatch, config.dp, float(expected), ticks)
        plan = PoissonPlan(q, config.dp.capacity, num_steps, max(num_epochs, 1))
        variables, phase_losses = run_poisson_steps(trainer, plan, variables, data, phase_key)
        losses.append(phase_losses if num_epochs else phase_losses[:0])
    return variables, jnp.concatenate(losses)


class DPState(NamedTuple):
    """One model's DP-SGD run between two of its steps (stacked over a leading [M] axis in a bank): a snapshot.

    variables, opt_state: as ``TrainState``'s (the optimizer state of the phase the next step is in);
    loss_sums, loss_counts: [epochs] float32 over the run's expected epochs: the summed loss and the drawn
      examples of the steps taken so far (``dp_losses``).
    """

    variables: Variables
    opt_state: Any
    loss_sums: jax.Array
    loss_counts: jax.Array


def dp_steps(config: TrainConfig, epochs: int) -> int:
    """Poisson steps of ``config``'s DP-SGD run in its first ``epochs`` expected epochs (round(epochs * n / B))."""
    assert config.dp is not None, "DP-SGD steps need TrainConfig.dp"
    return dpsgd.poisson_schedule(config.dp.num_examples, config.batch_size, epochs)[1] if epochs else 0


def initial_dp_state(fns: ModelFns, config: TrainConfig, key: jax.Array) -> DPState:
    """The state before step 0 of the DP-SGD run of model key ``key`` (``train_from_init``'s initialisation)."""
    variables = fns.init(jax.random.split(key, 3)[0])
    zeros = jnp.zeros(config.epochs, jnp.float32)
    return DPState(variables, make_optimizer(config, config.lr).init(variables["params"]), zeros, zeros)


def dp_losses(state: DPState, epochs: int) -> jax.Array:
    """Mean training loss of each of the run's first ``epochs`` expected epochs: [..., epochs]."""
    return state.loss_sums[..., :epochs] / jnp.maximum(state.loss_counts[..., :epochs], 1.0)


class _DPPhase(NamedTuple):
    """One phase of a DP-SGD run: its key, its steps [lo, hi) and expected epochs [lo, hi) in the run, its lr."""

    key: jax.Array
    steps: tuple[int, int]
    epochs: tuple[int, int]
    lr: float


def _dp_phases(config: TrainConfig, key: jax.Array) -> tuple[_DPPhase, _DPPhase]:
    """``_train_dp``'s two phases of the run of model key ``key``: half the steps at lr, the rest at lr / 10."""
    steps = dp_steps(config, config.epochs)
    first, first_epochs = steps // 2, config.epochs // 2
    _, first_key, second_key = jax.random.split(key, 3)
    return (
        _DPPhase(first_key, (0, first), (0, first_epochs), config.lr),
        _DPPhase(second_key, (first, steps), (first_epochs, config.epochs), config.lr * 0.1),
    )


def _phase_segment(run: tuple[ModelFns, TrainConfig, bool], phase: _DPPhase, state: DPState, data, span):
    """The run's steps [span) that fall in ``phase``, from ``state``; a phase entered at its first step starts
    with a fresh optimizer (as ``_train_dp``'s). run: (fns, config, ticks). Returns the DPState after them."""
    fns, config, ticks = run
    assert config.dp is not None, "a DP-SGD segment needs TrainConfig.dp"
    (lo, hi), (first_epoch, end_epoch) = phase.steps, phase.epochs
    a, b = max(span[0], lo), min(span[1], hi)
    if a >= b:
        return state
    q, _, expected = dpsgd.poisson_schedule(config.dp.num_examples, config.batch_size, config.epochs)
    augment, microbatch = augment_lib.get_augment(config.augment), resolve_microbatch(config.microbatch, fns)
    trainer = Trainer(fns, make_optimizer(config, phase.lr), augment, microbatch, config.dp, float(expected), ticks)
    fresh = trainer.optimizer.init(state.variables["params"]) if a == lo else state.opt_state
    plan = PoissonPlan(q, config.dp.capacity, b - a, max(end_epoch - first_epoch, 1))
    done, (sums, counts) = _poisson_scan(trainer, plan, TrainState(state.variables, fresh), data, phase.key, a - lo)
    # run_poisson_steps's expected epoch of each step, counted in the whole run.
    epoch = jnp.minimum(first_epoch + jnp.arange(a - lo, b - lo) * plan.num_epochs // (hi - lo), config.epochs - 1)
    add = lambda total, x: total + jax.ops.segment_sum(x, epoch, config.epochs)  # noqa: E731
    return DPState(done.variables, done.opt_state, add(state.loss_sums, sums), add(state.loss_counts, counts))


def train_dp_segment(
    fns: ModelFns, config: TrainConfig, key: jax.Array, data, start: tuple[int, DPState | None], ticks: bool = False
) -> DPState:
    """Continues the DP-SGD run that ``config`` describes from ``start`` to its ``stop_epochs``.

    The run is ``_train_dp``'s (``train_from_init``'s keys, round(epochs * n / B) steps, the first half at lr, the
    rest at lr / 10 with a fresh optimizer); this call takes its steps [dp_steps(start), dp_steps(stop_epochs)). A
    step draws from its phase key and its index in the phase alone, so a run continued from the state it saved at
    any epoch is, bitwise, the run taken straight.

    Args:
      fns: the network (no BatchNorm).
      config: the whole run (``epochs``, ``dp``) and where this call stops (``stop_epochs``; None: the end).
      key: this model's key (``train_from_init``'s).
      data: (images [N,H,W,C], labels [N] int32, mask [N] bool).
      start: (expected epochs already taken, static; the ``DPState`` after them, or None with 0: from ``key``'s
        initialisation).
      ticks: report finished steps to ``dcjax.progress``.

    Returns:
      The DPState after ``stop_epochs`` expected epochs.
    """
    dpsgd.check_network(fns)
    start_epochs, state = start
    if state is None:
        state = initial_dp_state(fns, config, key)
    span = (dp_steps(config, start_epochs), dp_steps(config, config.stop_epochs or config.epochs))
    for phase in _dp_phases(config, key):
        state = _phase_segment((fns, config, ticks), phase, state, data, span)
    return state


def _to_checkpoint(fns: ModelFns, config: TrainConfig, key: jax.Array, data, ticks: bool):
    """``train_from_init`` of a checkpoint of a longer DP-SGD run: that run's first stop_epochs, from initialisation."""
    assert config.stop_epochs is not None, "a checkpoint has stop_epochs"
    state = train_dp_segment(fns, config, key, data, (0, None), ticks)
    return state.variables, dp_losses(state, config.stop_epochs)


def train_from_init(
    fns: ModelFns, config: TrainConfig, schedule: Schedule, key: jax.Array, data, ticks: bool | None = None
) -> tuple[Variables, jax.Array]:
    """Initialise a network from ``key`` and train it on the masked pool.

    Args:
      fns: the network.
      config: optimisation settings.
      schedule: static loop sizes (``make_schedule``).
      key: this model's key; init, shuffling and augmentation keys are derived from it.
      data: (images [N,H,W,C], labels [N] int32, mask [N] bool).
      ticks: report finished steps to ``dcjax.progress``; None: ``progress.enabled()``.

    Returns:
      (trained variables, per-epoch mean training loss [epochs]). With ``config.dp`` the training is DP-SGD's
      Poisson-sampled steps (``_train_dp``; ``schedule`` unused), losses per expected epoch; with ``stop_epochs``
      too, that run's first stop_epochs (``train_dp_segment``), losses [stop_epochs].
    """
    if config.dp is not None:
        dpsgd.check_network(fns)
    ticks = progress.enabled() if ticks is None else ticks
    if config.stop_epochs is not None:
        return _to_checkpoint(fns, config, key, data, ticks)
    init_key, first_key, second_key = jax.random.split(key, 3)
    variables = fns.init(init_key)
    if config.dp is not None:
        return _train_dp(fns, config, variables, data, (first_key, second_key), ticks)
    augment = augment_lib.get_augment(config.augment)
    microbatch = resolve_microbatch(config.microbatch, fns)
    first = config.epochs // 2
    # Reference: the lr drops at epoch E//2 where E+1 epochs run; with ``epochs`` epochs in
    # all, the first phase is epochs//2 long (0 when training a single epoch). Each phase
    # gets a fresh optimizer: the momentum reset of the reference.
    phases = ((first_key, first, config.lr), (second_key, config.epochs - first, config.lr * 0.1))
    losses = []
    for phase_key, num_epochs, lr in phases:
        trainer = Trainer(fns, make_optimizer(config, lr), augment, microbatch, config.dp, progress=ticks)
        variables, phase_losses = run_epochs(trainer, schedule, variables, data, phase_key, num_epochs)
        losses.append(phase_losses)
    return variables, jnp.concatenate(losses)
