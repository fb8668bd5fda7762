"""dcjax.host: the CPU model and vector extensions that benchmark tables and recorded digests name."""

import subprocess
import sys

import jax

from dcjax import host

_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16

processor\t: 1
model name\t: not the first block
flags\t\t: amx_bf16
"""


def test_cpu_reads_the_first_processor_block(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(_CPUINFO)
    cpu = host.cpu(str(path))
    assert cpu.model == "AMD EPYC 9R14"
    assert "avx512_bf16" in cpu.flags and "amx_bf16" not in cpu.flags
    assert cpu.extensions(("avx512", "amx", "avx2", "fma")) == ["avx2", "avx512_bf16", "avx512f", "fma"]


def test_cpu_without_cpuinfo_names_the_platform_and_has_no_flags(tmp_path):
    cpu = host.cpu(str(tmp_path / "missing"))
    assert cpu.model and cpu.flags == frozenset()
    assert cpu.extensions(("avx2",)) == []


def test_provenance_names_the_commit_cpu_and_backend():
    record = host.provenance()
    assert set(record) == {"commit", "cpu", "cores", "jax", "backend"}
    # The tests run from a git checkout: the full hash, marked when dcjax/ has uncommitted changes.
    assert record["commit"] is not None and len(record["commit"].removesuffix("+changes")) == 40
    assert record["cpu"].startswith(host.cpu().model) and record["backend"] == jax.default_backend()


def test_commit_is_none_outside_a_git_checkout(tmp_path):
    assert host.commit(str(tmp_path / "pkg" / "module.py")) is None


def _git(repo, *args):
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True
    )


def test_commit_keeps_the_first_answer_while_the_process_runs(tmp_path):
    # A long run must record the commit it started from, not one made in the checkout while it ran.
    repo, module = tmp_path / "repo", tmp_path / "repo" / "pkg" / "module.py"
    module.parent.mkdir(parents=True)
    module.write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "first")
    first = host.commit(str(module))
    module.write_text("x = 2\n")
    _git(repo, "commit", "-qam", "second")
    assert first is not None and host.commit(str(module)) == first
    # A new process reads the new commit.
    code = f"from dcjax import host; print(host.commit({str(module)!r}))"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert len(fresh) == 40 and fresh != first
