"""The machine a number was measured on: its CPU model and vector extensions.

Machines of one kind differ (some have AVX-512 with BF16, some only AVX2), and both speeds and float rounding
follow the vector extensions, so benchmark tables and recorded digests (tests/golden.py) name them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform


@dataclasses.dataclass(frozen=True)
class Cpu:
    """model: the CPU's model name; flags: its feature flags (empty where /proc/cpuinfo is missing)."""

    model: str
    flags: frozenset[str]

    def extensions(self, prefixes: tuple[str, ...]) -> list[str]:
        """The flags starting with any of ``prefixes``, sorted."""
        return sorted(f for f in self.flags if f.startswith(prefixes))


def cpu(cpuinfo: str = "/proc/cpuinfo") -> Cpu:
    """This machine's CPU, from the first processor block of ``cpuinfo`` (Linux), else ``platform``'s name."""
    fallback = platform.processor() or platform.machine() or "unknown CPU"
    if not os.path.exists(cpuinfo):
        return Cpu(fallback, frozenset())
    with open(cpuinfo) as f:
        first = f.read().split("\n\n")[0].splitlines()
    info = {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in first if ":" in line)}
    return Cpu(info.get("model name", fallback), frozenset(info.get("flags", "").split()))


@functools.cache
def _commit_of(root: str) -> str | None:
    """``commit`` for the checkout at ``root``, asked of git once per process (see ``commit``)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    head = git("rev-parse", "HEAD")
    if not head:
        return None
    return head + ("+changes" if git("status", "--porcelain", "--", "dcjax") else "")


def commit(path: str | None = None) -> str | None:
    """The git commit of the checkout holding ``path`` (default: this package), with "+changes" when dcjax/ differs
    from it; None outside a git checkout (an installed wheel) or without git.

    The first answer for a checkout is kept for the life of the process: the code a process runs is the code it
    imported, so a commit made (or a file edited) while a long run goes on must not relabel that run's results.
    Launchers ask once at start (``experiments/common.launcher_main``).
    """
    return _commit_of(os.path.dirname(os.path.dirname(os.path.abspath(path or __file__))))


def provenance() -> dict:
    """Where a result came from: {"commit", "cpu" (model and vector extensions), "cores", "jax", "backend"}: the
    code and the platform its floats belong to (bitwise reproducibility is promised per platform)."""
    import jax

    info = cpu()
    extensions = "+".join(info.extensions(("avx512f", "avx512_bf16", "amx", "avx2", "fma")))
    return {
        "commit": commit(),
        "cpu": f"{info.model} ({extensions or 'no AVX2'})",
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
    }
