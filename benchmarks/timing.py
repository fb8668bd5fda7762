"""Shared benchmark helpers: timing with warm-up, the matmul roofline, XLA FLOP counts (condensation iterations'
too), a random MNIST-shaped pool.

These machines are noisy (+-20-40%), so every benchmark reports ratios of quantities
measured side by side in the same process, not absolute thresholds.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def median_seconds(fn, *args, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn(*args) with its outputs ready (compile excluded by warm-up)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def compiled_flops(jitted, *args) -> float:
    """FLOPs of one call as XLA's cost analysis counts them (0 if unavailable)."""
    analysis = jitted.lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", 0.0))


def forward_flops(fns, shape: tuple[int, ...]) -> float:
    """FLOPs of one forward pass of one [*shape] image through ``fns`` (XLA's count)."""
    return compiled_flops(jax.jit(fns.apply), fns.init(jax.random.key(0)), jnp.zeros((1,) + tuple(shape)))


def condense_iteration_flops(method: str, f: float, cfg, outer: int, num_classes: int) -> float:
    """FLOPs of one condensation iteration of ``cfg`` (a CondenseConfig) with ``outer`` matching steps.

    Counted from f, XLA's FLOPs of one forward pass of one image (XLA's cost analysis counts a loop body once, not
    per trip, so a whole iteration's own count is too low): DC and DSA (DSA's augmentation, a few gathers per
    image, is not counted) are real gradients 3f x outer x K x batch_real, synthetic gradients (second order, ~6f)
    x outer x K x ipc, and inner training 3f x (outer - 1) x inner x K x ipc; DM is one forward pass of K x
    batch_real real images plus forward and backward (~3f) of K x ipc synthetic ones (no loops: outer ignored).
    """
    k, ipc, inner = num_classes, cfg.ipc, cfg.loops[1]
    if method == "dm":
        return f * (k * cfg.batch_real + 3 * k * ipc)
    return f * (3 * outer * k * cfg.batch_real + 6 * outer * k * ipc + 3 * (outer - 1) * inner * k * ipc)


def random_pool(num_classes: int, shape: tuple[int, ...], per_class: int):
    """(pool [K * per_class, *shape] N(0, 1) images drawn from key 0, its ClassIndex): real-shaped data for timing."""
    import numpy as np
    from dcjax import data

    labels = np.repeat(np.arange(num_classes), per_class)
    pool = jax.random.normal(jax.random.key(0), (labels.size,) + tuple(shape))
    return pool, data.build_class_index(labels, num_classes)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a jitted n x n fp32 matmul: the practical roofline of this machine."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / median_seconds(f, a, repeats=repeats) / 1e9


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain markdown table of rows (dicts) restricted to columns."""

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def library() -> str:
    """Where dcjax was imported from, its git commit, and whether dcjax/ differs from it: which code a table
    measured (PYTHONPATH may point at another checkout, for before/after runs)."""
    import subprocess

    import dcjax

    root = os.path.dirname(os.path.dirname(os.path.abspath(dcjax.__file__)))

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = git("status", "--porcelain", "--", "dcjax")  # Untracked files count: a new module is new code.
    return f"dcjax from {root} @ {commit}" + (" with uncommitted changes in dcjax/" if dirty else "")


def cpu() -> str:
    """The CPU model and its vector extensions: machines of one kind differ (AVX-512 with BF16 or only AVX2), and
    fp32 and bf16 speeds follow them."""
    from dcjax import host

    info = host.cpu()
    vector = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2") if f in info.flags]
    return f"CPU {info.model}, {os.cpu_count()} cores, {'+'.join(vector) or 'no AVX2'}"
