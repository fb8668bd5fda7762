"""The privacy study: one membership-inference run per target recipe, on one split, in one table.

Rows (``ROWS``): the target's whole private data (``original``), a random ``per_class`` subset
of it (``subset``, the naive baseline), and DC synthetic sets condensed from it with noise and
with real init (``dc_noise``, ``dc_real``). Every row is an ``attack_run`` with the same seed,
hence the same pools, keep masks, canaries and model keys; only the recipe (and the training
protocol that suits its set size) changes. The attacker runs the target's whole pipeline for
its shadows, condensation included.

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

from dcjax import checkpoint
from dcjax import condense
from dcjax import data as data_lib
from dcjax import plots
from dcjax import study_report
from dcjax import train as train_lib
from dcjax import workdir as workdir_lib
from dcjax.models import ModelFns
from dcjax.privacy import attack_run, bank

ROWS = ("original", "subset", "dc_noise", "dc_real")
DESCRIPTIONS = {
    "original": "trained on all of its private data (half the target pool)",
    "subset": "trained on a random {per_class} per class of its private data (naive baseline)",
    "dc_noise": "trained on a DC synthetic set ({ipc}/class) condensed from its private data, noise init",
    "dc_real": "trained on a DC synthetic set ({ipc}/class) condensed from its private data, real init",
}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The shared attack setting plus what each row changes.

    attack: pools, bank size, shadows, canaries, queries, seed, network (its recipe and train
      fields are replaced per row).
    train_original: how the ``original`` row's models train on their ~N/2 private examples.
    train_small: how models train on 10-per-class sets (subset and synthetic rows): the
      reference evaluation protocol, scaled per tier.
    """

    attack: attack_run.AttackRunConfig = attack_run.AttackRunConfig()
    rows: tuple[str, ...] = ROWS
    train_original: train_lib.TrainConfig = train_lib.TrainConfig(epochs=100, augment="none")
    train_small: train_lib.TrainConfig = train_lib.TrainConfig(epochs=1000, augment="dc")
    per_class: int = 10
    condense: condense.CondenseConfig = condense.CondenseConfig()

    def __post_init__(self):
        unknown = [r for r in self.rows if r not in ROWS]
        if unknown or not self.rows or len(set(self.rows)) != len(self.rows):
            raise ValueError(f"rows must be distinct names from {ROWS}, got {list(self.rows)}")


def row_config(config: StudyConfig, name: str) -> attack_run.AttackRunConfig:
    """The attack-run settings of one row."""
    if name == "original":
        recipe, train = bank.Recipe("original"), config.train_original
    elif name == "subset":
        recipe, train = bank.Recipe("subset", per_class=config.per_class), config.train_small
    else:
        init = "noise" if name == "dc_noise" else "real"
        dc = dataclasses.replace(config.condense, init=init)
        recipe, train = bank.Recipe("condense", condense=dc), config.train_small
    return dataclasses.replace(config.attack, recipe=recipe, train=train)


def _row_summary(config: StudyConfig, name: str, results: dict) -> dict:
    """The row as ``study_report`` reads it (full per-run results stay in the row's workdir)."""
    attacks = results["attacks"]
    return {
        "name": name,
        "description": DESCRIPTIONS[name].format(per_class=config.per_class, ipc=config.condense.ipc),
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
    logging.info("row %s: %s", name, DESCRIPTIONS[name].format(per_class=config.per_class,
                                                            ipc=config.condense.ipc))
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
        if not row["name"].startswith("dc_"):
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
        attack_run.check_recipe_fits(row_config(config, name), data[0])
    # Each row checks its own settings, so finished rows survive a change to another row's.
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
