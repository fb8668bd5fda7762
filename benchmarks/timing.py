"""Shared benchmark helpers: timing with warm-up, the matmul roofline, XLA FLOP counts.

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
    """Where dcjax was imported from, and its git commit: which code a table measured (PYTHONPATH may point
    at another checkout, for before/after runs)."""
    import subprocess

    import dcjax

    root = os.path.dirname(os.path.dirname(os.path.abspath(dcjax.__file__)))
    commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return f"dcjax from {root} @ {commit.stdout.strip() or 'unknown commit'}"


def cpu() -> str:
    """The CPU model and its vector extensions: machines of one kind differ (AVX-512 with BF16 or only AVX2), and
    fp32 and bf16 speeds follow them."""
    import platform

    if not os.path.exists("/proc/cpuinfo"):
        return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    with open("/proc/cpuinfo") as f:
        first = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    model = first.get("model name\t", platform.machine()).strip()
    flags = first.get("flags\t\t", "").split()
    vector = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2") if f in flags]
    return f"CPU {model}, {os.cpu_count()} cores, {'+'.join(vector) or 'no AVX2'}"
