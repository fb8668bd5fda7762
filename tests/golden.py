r"""Recorded output hashes of the CPU tiers, shrunk: the proof that a refactor leaves behaviour bitwise the same.

Each run is a CPU tier's own flagfile (experiments/flags/) with overrides that shrink it to seconds on mock MNIST
(tests/mock_launch.py): the same method, initialisation, network family, augmentation and attacks, fewer
iterations and smaller shapes. A run's digest is the SHA-256 of every result array it writes (synthetic.npz,
attack_data.npz; not its config or times) and of the numbers in its results.json that are results (accuracies,
attack scores; not times or paths). Digests are recorded per platform (machine, CPU model and vector extensions,
jax version): bitwise equality is promised for the same seed on the same platform, not across platforms (an AVX2
and an AVX-512 CPU of one machine kind round differently) or jax versions. Each record names the commit it was made
at.

  python tests/golden.py --check             # run every tier, compare with this platform's record
  python tests/golden.py --write             # after a deliberate change of behaviour: this platform's record
                                             # replaces every other (they describe the old behaviour); say in the
                                             # commit which change and why
  python tests/golden.py --add               # record this platform beside the others, for code whose behaviour
                                             # --check has just shown unchanged on a recorded platform
  python tests/golden.py --root=/other/checkout   # print the digests of another checkout (before/after)

tests/test_golden.py checks that the record is complete and what a digest ignores, and (slow tier) runs the
comparison where this platform has a record.
"""

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
RECORD = os.path.join(HERE, "golden_hashes.json")
_SHRINK_CONDENSE = ["--ipc=2", "--width=16", "--batch_real=8", "--num_eval=1", "--eval_epochs=2"]
_SHRINK_CONDENSE += ["--eval_baseline=false"]
# name: (mock examples, launcher, flags). The tier's flagfile comes first, so the overrides win.
TIERS = {
    "condense_dc": (200, "condense", ["condense_cpu.cfg", "--iterations=2", "--inner_loop=2"] + _SHRINK_CONDENSE),
    "condense_dsa": (200, "condense", ["condense_dsa_cpu.cfg", "--iterations=2", "--inner_loop=2"] + _SHRINK_CONDENSE),
    "condense_dm": (200, "condense", ["condense_dm_cpu.cfg", "--iterations=3"] + _SHRINK_CONDENSE),
    "attack_sanity": (
        400,
        "attack",
        ["attack_sanity_cpu.cfg", "--target_pool=100", "--attacker_pool=100", "--num_models=6", "--num_shadow=2"]
        + ["--width=8", "--epochs=2", "--num_population=50", "--num_resamples=5", "--attack_steps=20"],
    ),
}
_NOT_RESULTS = ("second", "time", "wall", "path", "workdir", "date", "eta")


def platform_id() -> str:
    """Where digests can be compared: machine, OS, CPU model and its vector extensions, jax version, backend."""
    import jax

    from dcjax import host

    cpu = host.cpu()
    isa = "+".join(cpu.extensions(("avx512", "amx", "avx2", "fma")))
    return f"{platform.machine()}-{platform.system()} {cpu.model} [{isa}] jax {jax.__version__} {jax.default_backend()}"


def _is_record(name: str) -> bool:
    """A field that describes a run (its config, times, paths), not a result: left out of the digest."""
    return name.lower().startswith("config") or any(s in name.lower() for s in _NOT_RESULTS)


def _results_only(tree):
    """results.json without times and paths (they differ between identical runs)."""
    if isinstance(tree, dict):
        return {k: _results_only(v) for k, v in tree.items() if not _is_record(k)}
    if isinstance(tree, list):
        return [_results_only(v) for v in tree]
    return tree


def digest(workdir: str, npz_name: str, results_keys: tuple[str, ...]) -> str:
    """SHA-256 over the arrays of ``npz_name`` (name, dtype, shape, bytes) and the results.json keys given.

    Records are left out (``_is_record``: the run's config, which gains fields as the code grows, and wall times):
    they differ between runs that compute the same results.
    """
    import numpy as np

    h = hashlib.sha256()
    with np.load(os.path.join(workdir, npz_name)) as arrays:
        for name in sorted(n for n in arrays.files if not _is_record(n)):
            a = np.ascontiguousarray(arrays[name])
            h.update(f"{name} {a.dtype} {a.shape}".encode())
            h.update(a.tobytes())
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    h.update(json.dumps(_results_only({k: results[k] for k in results_keys}), sort_keys=True).encode())
    return h.hexdigest()


def user_env(root: str) -> dict[str, str]:
    """The environment of a user's run of the checkout at ``root``: one CPU device, no inherited XLA flags, progress
    ticks traced in (the test session fakes 4 devices and compiles without LLVM's optimisations or ticks,
    tests/conftest.py), so its results are bitwise those the records and the committed runs were made with."""
    return dict(
        os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS="", PYTHONPATH=root, DCJAX_MOCK_TICKS="1"
    )


def run_tier(name: str, root: str, scratch: str) -> str:
    """Runs tier ``name`` of the checkout at ``root`` in a fresh workdir under ``scratch``: its digest."""
    examples, launcher, (flagfile, *overrides) = TIERS[name][0], TIERS[name][1], TIERS[name][2]
    workdir = os.path.join(scratch, name)
    cmd = [sys.executable, os.path.join(HERE, "mock_launch.py"), str(examples), f"experiments/{launcher}.py"]
    cmd += [f"--flagfile=experiments/flags/{flagfile}", *overrides, f"--workdir={workdir}"]
    proc = subprocess.run(cmd, cwd=root, env=user_env(root), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"tier {name} failed in {root}:\n{proc.stderr[-3000:]}")
    if launcher == "condense":
        return digest(workdir, "synthetic.npz", ("evals",))
    return digest(workdir, "attack_data.npz", ("attacks",))


def run_all(root: str) -> dict[str, str]:
    """Digest of every tier, each run in its own temporary workdir."""
    with tempfile.TemporaryDirectory() as scratch:
        return {name: run_tier(name, root, scratch) for name in TIERS}


def read_records() -> dict[str, dict]:
    """{platform: {"commit": ..., "digests": {tier: sha256}}} from tests/golden_hashes.json."""
    with open(RECORD) as f:
        return json.load(f)["platforms"]


def _write_records(records: dict[str, dict]) -> None:
    tmp = RECORD + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"platforms": records}, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, RECORD)


def _commit(root: str) -> str:
    out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def check(digests: dict[str, str]) -> int:
    """0 if ``digests`` equal this platform's record, 1 if some tier changed, 2 if this platform has no record."""
    records, here = read_records(), platform_id()
    if here not in records:
        print(f"no digests recorded for {here}; recorded: {'; '.join(sorted(records))}")
        return 2
    recorded = records[here]["digests"]
    changed = sorted(n for n in TIERS if recorded.get(n) != digests[n])
    print("unchanged" if not changed else f"changed: {', '.join(changed)}")
    return 1 if changed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.path.dirname(HERE), help="checkout whose launchers and library run")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare with this platform's record")
    mode.add_argument("--write", action="store_true", help="record this platform and drop every other record")
    mode.add_argument("--add", action="store_true", help="record this platform, keeping the others")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root)
    digests = run_all(root)
    print(json.dumps(digests, indent=1))
    if args.write or args.add:
        records = read_records() if args.add else {}
        records[platform_id()] = {"commit": _commit(root), "digests": digests}
        _write_records(records)
    return check(digests) if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
