r"""Do the reported numbers regenerate from the compact export (format 2)? Before/after, export by export.

For each committed export (or those given), the export as it was at git revision --before is attacked by that
revision's own library (``attack_data.load``, ``attacks.compute_scores``, ``assess.assess``) and the export as it
is now by this checkout's; both in subprocesses, so each imports its own ``dcjax``. It then prints, per export,
whether every attack's per-slice summary (AUC, TPR at 1 / 0.1 / 0.01 % FPR and their intervals), the utility
and Shokri's accuracy are identical, the summary values that moved (before -> after), and the largest absolute
difference of each attack's scores [M, N]. ~20 s per export and side on one CPU core.

  python benchmarks/export_regen.py --before=<rev>          # every committed export
  python benchmarks/export_regen.py --before=<rev> docs/results/attack_sanity_cpu/attack_data.npz
"""

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORTS = [f"docs/privacy_study_cpu/{row}/attack_data.npz" for row in (
    "original", "subset", "dc_real", "dc_noise", "dsa_real", "dm_real", "dpsgd_eps1", "dpsgd_eps4", "dpsgd_eps8"
)] + ["docs/results/attack_sanity_cpu/attack_data.npz"]  # fmt: skip


def attack(export: str, out: str) -> None:
    """Scores and summaries of ``export`` by the importable ``dcjax``: ``out``.npz (scores) and ``out``.json."""
    import numpy as np

    import dcjax
    from dcjax.privacy import assess, attack_data, attacks, rmia, shokri

    d = attack_data.load(export)
    cfg = d.config
    keys = attack_data.run_keys(cfg["seed"])
    rmia_config = rmia.RMIAConfig(**cfg.get("rmia", {}))
    scores, shokri_accuracy = attacks.compute_scores(d, shokri.AttackConfig(**cfg["attack"]), rmia_config, keys)
    summary = {
        "dcjax": dcjax.__file__,
        "utility": assess.utility(d),
        "shokri_accuracy": shokri_accuracy.tolist(),
        "attacks": assess.assess(scores, d, keys, cfg["num_resamples"])["attacks"],
    }
    np.savez(out + ".npz", **scores)
    with open(out + ".json", "w") as f:
        json.dump(summary, f, sort_keys=True)


def _run_side(root: str, export: str, out: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, os.path.abspath(__file__), "--attack", export, out]
    return subprocess.Popen(command, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _moved(before, after, path=""):
    """[(path, before, after)] of the leaves of two JSON trees that differ."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after))
        return [m for k in keys for m in _moved(before.get(k), after.get(k), f"{path}/{k}")]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [m for i, (a, b) in enumerate(zip(before, after)) for m in _moved(a, b, f"{path}[{i}]")]
    return [] if before == after else [(path, before, after)]


def compare(before: str, after: str, export: str) -> str:
    """The report of one export from the two sides' outputs (``attack``)."""
    import numpy as np

    with open(before + ".json") as f, open(after + ".json") as g:
        a, b = json.load(f), json.load(g)
    lines = [f"{export}: " + ("IDENTICAL summaries" if a["attacks"] == b["attacks"] else "summaries MOVED")]
    for key in ("utility", "shokri_accuracy"):
        lines.append(f"  {key}: " + ("identical" if a[key] == b[key] else f"moved {_moved(a[key], b[key])}"))
    with np.load(before + ".npz") as x, np.load(after + ".npz") as y:
        if x.files != y.files:
            lines.append(f"  attacks differ: {x.files} -> {y.files}")
        for name in x.files:
            diff = float(np.max(np.abs(x[name] - y[name]))) if name in y.files else float("nan")
            moved = _moved(a["attacks"][name], b["attacks"].get(name))
            lines.append(f"  {name:28s} max |score diff| {diff:.3g}; {len(moved)} summary values moved")
            lines += [f"      {p}: {u} -> {v}" for p, u, v in moved]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--attack"]:
        return attack(*argv[1:3])
    if not argv or not argv[0].startswith("--before="):
        sys.exit(__doc__)
    rev, exports = argv[0].split("=", 1)[1], argv[1:] or EXPORTS
    with tempfile.TemporaryDirectory() as tmp:
        old_root = os.path.join(tmp, "before")
        os.makedirs(old_root)
        archive = subprocess.run(["git", "archive", rev, "dcjax"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", old_root], input=archive.stdout, check=True)
        for i, export in enumerate(exports):
            old = os.path.join(tmp, f"old_{i}.npz")
            with open(old, "wb") as f:
                f.write(subprocess.run(["git", "show", f"{rev}:{export}"], cwd=ROOT, capture_output=True).stdout)
            sides = [(old_root, old, os.path.join(tmp, f"b{i}")), (ROOT, export, os.path.join(tmp, f"a{i}"))]
            for proc in [_run_side(*side) for side in sides]:  # Both sides at once.
                _, err = proc.communicate()
                if proc.returncode != 0:
                    sys.exit(f"{export}: {err[-2000:]}")
            print(compare(sides[0][2], sides[1][2], export), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
