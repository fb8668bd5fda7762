"""The privacy study: one membership-inference run per target recipe, on one split, in one table.

Rows (``ROWS``): the target's whole private data (``original``), a random ``per_class`` subset
of it (``subset``, the naive baseline), and DC synthetic sets condensed from it with noise and
with real init (``dc_noise``, ``dc_real``); ``DEFAULT_ROWS`` are these four. Optional rows:
``dsa_real`` and ``dm_real`` (the other condensation methods, ``METHOD_ROWS``), and
``dpsgd_eps{1,4,8}`` train on the whole private data like ``original`` but with DP-SGD
(``dcjax.dpsgd``), the noise calibrated to that epsilon at ``dp_delta``
(``dcjax.privacy.accounting``; nominal epsilons, see its docstring). Every row is an
``attack_run`` with the same seed, hence the same pools, keep masks, canaries and model keys;
only the recipe (and the training protocol that suits its set size) changes. The attacker
runs the target's whole pipeline for its shadows, condensation included.

Workdir: ``config.json``; one sub-directory per row (a complete ``attack_run`` workdir, so a
killed study resumes inside the row it was in); ``results.json`` (schema: ``dcjax.study_report``);
``RESULTS.md`` generated from it; figures ``privacy_accuracy.png``, ``roc_targets.png`` and
``synthetic_<row>.png``.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
from absl import logging

from dcjax import augment as augment_lib
from dcjax import checkpoint
from dcjax import condense
from dcjax import data as data_lib
from dcjax import dpsgd
from dcjax import plots
from dcjax import study_report
from dcjax import train as train_lib
from dcjax import workdir as workdir_lib
from dcjax.models import ModelFns
from dcjax.privacy import accounting, attack_run, bank

DEFAULT_ROWS = ("original", "subset", "dc_noise", "dc_real")
METHOD_ROWS = ("dsa_real", "dm_real")
_DM_PAPER_ITERATIONS = condense.METHOD_DEFAULTS["dm"]["iterations"]  # (The config field `condense` shadows the module.)  # The other condensation methods, real init (their papers' default).
DP_EPSILONS = {"dpsgd_eps1": 1.0, "dpsgd_eps4": 4.0, "dpsgd_eps8": 8.0}  # Row -> target epsilon.
ROWS = DEFAULT_ROWS + METHOD_ROWS + tuple(DP_EPSILONS)  # Every valid row name.
_DP = ("trained with DP-SGD on all of its private data: epsilon = {epsilon:g} at delta = {delta:g} "
       "(RDP accountant, Poisson-sampling approximation), noise multiplier {noise:.3f}, clip {clip:g}")
DESCRIPTIONS = {
    "original": "trained on all of its private data (half the target pool)",
    "subset": "trained on a random {per_class} per class of its private data (naive baseline)",
    "dc_noise": "trained on a DC synthetic set ({ipc}/class) condensed from its private data, noise init",
    "dc_real": "trained on a DC synthetic set ({ipc}/class) condensed from its private data, real init",
    "dsa_real": "trained (with DSA augmentation) on a DSA synthetic set ({ipc}/class) condensed from its private "
                "data, real init",
    "dm_real": "trained (with DSA augmentation) on a DM synthetic set ({ipc}/class) condensed from its private data "
               "in {dm_iterations} iterations, real init",
    **{name: _DP for name in DP_EPSILONS},
}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The shared attack setting plus what each row changes.

    attack: pools, bank size, shadows, canaries, queries, seed, network (its recipe and train
      fields are replaced per row).
    train_original: how the ``original`` row's models train on their ~N/2 private examples.
    train_small: how models train on 10-per-class sets (subset and synthetic rows): the
      reference evaluation protocol, scaled per tier.
    dp_delta, dp_clip: delta of the DP-SGD rows' epsilons and their per-example clip norm.
    dp_lr: the DP-SGD rows' learning rate (None: ``train_original``'s); they otherwise train
      as ``train_original``. Noisy gradients usually want a larger step than clean ones.
    dm_iterations: iterations of the ``dm_real`` row (a DM iteration is far cheaper than a DC
      one; its lr_img is DM's 1.0). ``dsa_real`` uses ``condense`` as the DC rows do.
    """

    attack: attack_run.AttackRunConfig = attack_run.AttackRunConfig()
    rows: tuple[str, ...] = DEFAULT_ROWS
    train_original: train_lib.TrainConfig = train_lib.TrainConfig(epochs=100, augment="none")
    train_small: train_lib.TrainConfig = train_lib.TrainConfig(epochs=1000, augment="dc")
    per_class: int = 10
    condense: condense.CondenseConfig = condense.CondenseConfig()
    dp_delta: float = 1e-5
    dp_clip: float = 1.0
    dp_lr: float | None = None
    dm_iterations: int = _DM_PAPER_ITERATIONS

    def __post_init__(self):
        unknown = [r for r in self.rows if r not in ROWS]
        if unknown or not self.rows or len(set(self.rows)) != len(self.rows):
            raise ValueError(f"rows must be distinct names from {ROWS}, got {list(self.rows)}")
        if not 0 < self.dp_delta < 1:
            raise ValueError(f"dp_delta must be in (0, 1), got {self.dp_delta}")
        if not self.dp_clip > 0:
            raise ValueError(f"dp_clip must be > 0, got {self.dp_clip}")
        if self.dp_lr is not None and not self.dp_lr > 0:
            raise ValueError(f"dp_lr must be > 0, got {self.dp_lr}")
        if self.dm_iterations < 1:
            raise ValueError(f"dm_iterations must be >= 1, got {self.dm_iterations}")


def dp_setting(config: StudyConfig, name: str) -> dict | None:
    """The privacy setting of a DP-SGD row (None for other rows).

    The accountant sees the expected private-half size n = target_pool // 2, q = B / n and
    steps = epochs * ceil(n / B) of ``train_original``. Each model's actual half varies
    around n, so its own nominal epsilon differs by a few percent (CPU tier, seed 0: halves
    of 486..525 examples give 4.04..4.13 for the epsilon-4 row).
    """
    if name not in DP_EPSILONS:
        return None
    n = config.attack.target_pool // 2
    train = config.train_original
    q, steps = accounting.dpsgd_steps(n, train.batch_size, train.epochs)
    noise = accounting.noise_for_epsilon(DP_EPSILONS[name], q, steps, config.dp_delta)
    return {"epsilon": DP_EPSILONS[name], "delta": config.dp_delta, "noise_multiplier": noise,
            "lr": config.dp_lr or train.lr,
            "l2_clip": config.dp_clip, "sample_rate": q, "steps": steps, "private_examples": n,
            "accountant": "rdp, Poisson sampling (approximation for shuffled batches)"}


def _original(config: StudyConfig, name: str):
    return bank.Recipe("original"), config.train_original


def _subset(config: StudyConfig, name: str):
    return bank.Recipe("subset", per_class=config.per_class), config.train_small


def _dc(config: StudyConfig, name: str):
    dc = dataclasses.replace(config.condense, method="dc", init="noise" if name == "dc_noise" else "real")
    return bank.Recipe("condense", condense=dc), config.train_small


def _other_method(config: StudyConfig, name: str):
    """dsa_real / dm_real: the study's condensation settings with that method, real init; trained with DSA.

    The reference evaluates DSA and DM sets with DSA augmentation (PROTOCOL sections 4-5), so these rows do too.
    """
    method = name.split("_")[0]
    changes = {"method": method, "init": "real"}
    if method == "dm":
        changes.update(iterations=config.dm_iterations, lr_img=condense.METHOD_DEFAULTS["dm"]["lr_img"])
    recipe = bank.Recipe("condense", condense=dataclasses.replace(config.condense, **changes))
    augment = augment_lib.dsa_augment_name(config.condense.dsa_strategy)
    return recipe, dataclasses.replace(config.train_small, augment=augment)


def _dpsgd(config: StudyConfig, name: str):
    dp = dp_setting(config, name)
    train = dataclasses.replace(config.train_original, lr=config.dp_lr or config.train_original.lr,
                                dp=dpsgd.DPConfig(dp["l2_clip"], dp["noise_multiplier"]))
    return bank.Recipe("original"), train


# Row name -> (config, name) -> (recipe, training). A new row adds one entry (and its name to ROWS).
_ROW_RECIPES = {"original": _original, "subset": _subset, "dc_noise": _dc, "dc_real": _dc,
                **{name: _other_method for name in METHOD_ROWS},
                **{name: _dpsgd for name in DP_EPSILONS}}


def row_config(config: StudyConfig, name: str) -> attack_run.AttackRunConfig:
    """The attack-run settings of one row."""
    if name not in _ROW_RECIPES:
        raise ValueError(f"unknown row {name!r}; expected one of {ROWS}")
    recipe, train = _ROW_RECIPES[name](config, name)
    return dataclasses.replace(config.attack, recipe=recipe, train=train)


def describe(config: StudyConfig, name: str) -> str:
    """One line on what the row's targets are trained on."""
    dp = dp_setting(config, name) or {}
    return DESCRIPTIONS[name].format(per_class=config.per_class, ipc=config.condense.ipc,
                                     dm_iterations=config.dm_iterations,
                                     epsilon=dp.get("epsilon"), delta=dp.get("delta"),
                                     noise=dp.get("noise_multiplier"), clip=dp.get("l2_clip"))


def _row_summary(config: StudyConfig, name: str, results: dict) -> dict:
    """The row as ``study_report`` reads it (full per-run results stay in the row's workdir)."""
    attacks = results["attacks"]
    dp = dp_setting(config, name)
    return {
        "name": name,
        "description": describe(config, name),
        **({"dp": dp} if dp else {}),
        "utility": results["utility"],
        "shokri_accuracy": results["shokri_accuracy"],
        "attacks": {a: {s: v for s, v in by_slice.items() if not s.startswith("class_")}
                    for a, by_slice in attacks.items() if a != "nearest_synthetic"},
        "nearest": attacks.get("nearest_synthetic"),
        "roc_lira": results["roc"][study_report.LIRA],
        "wall_seconds": results["wall_seconds"],
    }


def _run_row(config: StudyConfig, name: str, fns: ModelFns, data, workdir: str) -> dict:
    """A finished row is read back; an unfinished one runs (or resumes)."""
    row_dir = workdir_lib.path(workdir, name)
    done = workdir_lib.path(row_dir, workdir_lib.RESULTS)
    row = row_config(config, name)
    if os.path.exists(done):
        if not workdir_lib.config_matches(row_dir, dataclasses.asdict(row)):
            raise workdir_lib.WorkdirError(f"row {name} in {workdir} finished with other settings; "
                                           "pass --overwrite or choose another --workdir")
        logging.info("row %s: already finished, reading %s", name, done)
        return checkpoint.read_json(done)
    logging.info("row %s: %s", name, describe(config, name))
    train, test = data
    return attack_run.run_attack(row, fns, train, test, row_dir)


def _figures(workdir: str, results: dict, train: data_lib.ArrayDataset) -> dict[str, str]:
    """Writes the study figures; returns {caption: file name relative to the workdir}."""
    figures = {"Privacy vs accuracy (LiRA TPR at 0.1% FPR)": "privacy_accuracy.png",
               "LiRA ROC of every target (all trials)": "roc_targets.png"}
    study_report.privacy_accuracy_figure(workdir_lib.path(workdir, "privacy_accuracy.png"), results)
    curves = {row["name"]: (np.asarray(row["roc_lira"]["fpr"]), np.asarray(row["roc_lira"]["tpr"]))
              for row in results["rows"]}
    plots.roc_figure(workdir_lib.path(workdir, "roc_targets.png"), curves,
                     f"LiRA ({study_report.LIRA}) per target")
    for row in results["rows"]:
        figures[f"Every attack against the {row['name']} targets"] = f"{row['name']}/roc.png"
    for row in results["rows"]:
        if not row["name"].startswith(("dc_", "dsa_", "dm_")):
            continue
        synthetic = attack_run.load_model(workdir_lib.path(workdir, row["name"]), 0)["synthetic"]
        name = f"synthetic_{row['name']}.png"
        plots.image_grid(workdir_lib.path(workdir, name), data_lib.denormalize(synthetic, train.name),
                         train.num_classes, f"{row['name']}: target 0's synthetic set")
        figures[f"Synthetic set released by target 0 ({row['name']})"] = name
    return figures


def run_study(config: StudyConfig, fns: ModelFns, data, workdir: str, about: dict,
              overwrite: bool = False) -> dict:
    """Runs (or resumes) every row, then writes results.json, RESULTS.md and the figures.

    Args:
      config: the study's settings.
      fns: the network of every target and shadow.
      data: (train, test) ``ArrayDataset``s; both pools come from train.
      workdir: output directory (``dcjax.workdir`` rules).
      about: {"tier", "command", "machine"} recorded in results.json and RESULTS.md, and
        optionally "conclusion": hand-written markdown appended to RESULTS.md.
      overwrite: discard whatever the workdir holds.
    """
    for name in config.rows:  # Every row's feasibility first: fail before hours of work.
        row = row_config(config, name)
        attack_run.check_recipe_fits(row, data[0])
        if row.train.dp is not None:
            dpsgd.check_network(fns)
    # Each row checks its own settings, so finished rows survive a change to another row's,
    # and rows can be added to a finished study (its finished rows are read back).
    workdir_lib.prepare(workdir, dataclasses.asdict(config), overwrite, parts_checked=True)
    tic = time.perf_counter()
    rows = []
    for name in config.rows:
        results = _run_row(config, name, fns, data, workdir)
        rows.append(_row_summary(config, name, results))
    about = dict(about)
    conclusion = about.pop("conclusion", "")
    results = {**about, "rows": rows, "config": dataclasses.asdict(config),
               # Sum of the rows' own wall times: a resumed study still reports its whole cost.
               "wall_seconds": float(sum(r["wall_seconds"] for r in rows)),
               "this_invocation_seconds": time.perf_counter() - tic}
    write_report(workdir, results, data[0], conclusion)
    checkpoint.write_json(workdir_lib.path(workdir, workdir_lib.RESULTS), results)  # Last: finished.
    return results


def write_report(workdir: str, results: dict, train: data_lib.ArrayDataset, conclusion: str = "") -> None:
    """Figures and RESULTS.md (generated table + the hand-written ``conclusion``) from the results."""
    figures = _figures(workdir, results, train)
    study_report.write_results_document(workdir_lib.path(workdir, "RESULTS.md"), results, figures,
                                        conclusion)


def rewrite_report(workdir: str, train: data_lib.ArrayDataset, conclusion: str) -> dict:
    """Regenerates the report of a FINISHED study, e.g. to add a conclusion; trains nothing."""
    done = workdir_lib.path(workdir, workdir_lib.RESULTS)
    if not os.path.exists(done):
        raise workdir_lib.WorkdirError(f"{workdir} holds no finished study (no {workdir_lib.RESULTS})")
    results = checkpoint.read_json(done)
    write_report(workdir, results, train, conclusion)
    return results
