"""dcjax.host: the CPU model and vector extensions that benchmark tables and recorded digests name."""

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
