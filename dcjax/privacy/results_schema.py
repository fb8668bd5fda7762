"""The schema of what the reports read, checked on read: one attack run's results and a study's.

The writers (``attack_run``, ``study``) build results dicts and store them as results.json; the reports
(``tables``, ``study_report``) render them. Every field a report reads is declared here with its type, and a
field may be absent (``Optional``) or null (``Nullable``) only where declared so, with the reason. Those fields,
and only those, render as an en dash (not applicable); any other field missing, null or of another type raises
``SchemaError`` naming the field and the file, so a writer and a report that drift apart fail the tests instead of
filling RESULTS.md with dashes. Fields no report reads are not declared: a writer may add more.

Checks: ``check_run`` (an attack run's results: ``RUN``), ``check_study`` (a study's: ``STUDY``), ``check_rows``
(the rows the tables read: ``ROW``), ``check_about`` (a study's header, before it runs); ``read_run`` /
``read_study`` read a results.json and check it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dcjax import checkpoint
from dcjax.privacy.poster import TRAINED_ON

# 2: example-level bootstrap, natural headline slice, strongest attack, RMIA, audits.
# 3: the cross-fitted headline (selection-free), two-way intervals, the null test.
RUN_SCHEMA = 3  # An attack run's results.json ("schema"); the report reads this version only.

TPRS = ("tpr_at_0.01", "tpr_at_0.001", "tpr_at_0.0001")  # The tables' TPR columns (FPR 1 %, 0.1 %, 0.01 %).
METRICS = ("auc",) + TPRS
HEADLINE = "tpr_at_0.001"  # The headline metric: TPR at 0.1 % FPR.


class SchemaError(ValueError):
    """Results that lack a field the report reads (or hold it as another type): the writer and the report
    disagree, or the file is not what its name says. ``source``: the file (or what the results are);
    ``field``: the field's path, e.g. ``rows[2] (dc_real).headline.model.samples``."""

    def __init__(self, source: str, field: str, problem: str):
        self.source, self.field, self.problem = source, field, problem
        super().__init__(f"{source}: {field}: {problem}")

    def __reduce__(self):  # Picklable despite the extra arguments.
        return SchemaError, (self.source, self.field, self.problem)


class _Problem(Exception):
    """A field's problem, raised inside a check; the public checks add the source (``SchemaError``)."""

    def __init__(self, field: str, problem: str):
        super().__init__(field, problem)
        self.field, self.problem = field, problem


class Spec:
    """The expected shape of one JSON value."""

    def check(self, value: Any, where: str) -> None:
        """Raises ``_Problem`` naming ``where`` (the value's path) unless ``value`` fits."""
        raise NotImplementedError


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


@dataclasses.dataclass(frozen=True)
class Scalar(Spec):
    """A JSON scalar of one of ``kinds`` (a bool is not a number, nor a number a bool)."""

    kinds: tuple[type, ...]
    name: str

    def check(self, value: Any, where: str) -> None:
        if isinstance(value, bool) != (bool in self.kinds) or not isinstance(value, self.kinds):
            raise _Problem(where, f"must be {self.name}, got {_kind(value)}")


NUM = Scalar((int, float), "a number")  # NaN included: it renders as a dash, as an undefined value.
INT = Scalar((int,), "an integer")
STR = Scalar((str,), "a string")
BOOL = Scalar((bool,), "a boolean")


@dataclasses.dataclass(frozen=True)
class Nullable(Spec):
    """``spec`` or null; ``why``: when it is null (a report renders it as not applicable)."""

    spec: Spec
    why: str

    def check(self, value: Any, where: str) -> None:
        if value is not None:
            self.spec.check(value, where)


@dataclasses.dataclass(frozen=True)
class Optional(Spec):
    """A field of a ``Record`` that may be absent; ``why``: when it is (a report renders it as not applicable)."""

    spec: Spec
    why: str

    def check(self, value: Any, where: str) -> None:
        self.spec.check(value, where)


def _child(where: str, key: str) -> str:
    """The path of ``where``'s field ``key``: ``a.b``, or ``a["tpr_at_0.001"]`` for a key that is no name."""
    if not key.isidentifier():
        return f'{where}["{key}"]'
    return f"{where}.{key}" if where else key


@dataclasses.dataclass(frozen=True)
class Record(Spec):
    """A JSON object holding ``fields`` (every one required unless ``Optional``); other keys are not checked."""

    fields: Mapping[str, Spec]

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _Problem(where, f"must be an object, got {_kind(value)}")
        for key, spec in self.fields.items():
            if key in value:
                spec.check(value[key], _child(where, key))
            elif not isinstance(spec, Optional):
                raise _Problem(_child(where, key), "missing (a required field: the report reads it)")


@dataclasses.dataclass(frozen=True)
class MapOf(Spec):
    """A JSON object whose every value fits ``spec`` (keys: attack or row names)."""

    spec: Spec

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _Problem(where, f"must be an object, got {_kind(value)}")
        for key, item in value.items():
            self.spec.check(item, _child(where, key))


@dataclasses.dataclass(frozen=True)
class ListOf(Spec):
    """A JSON array whose every item fits ``spec``; of ``length`` items if given."""

    spec: Spec
    length: int | None = None

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, list):
            raise _Problem(where, f"must be an array, got {_kind(value)}")
        if self.length is not None and len(value) != self.length:
            raise _Problem(where, f"must hold {self.length} items, got {len(value)}")
        for i, item in enumerate(value):
            self.spec.check(item, f"{where}[{i}]")


@dataclasses.dataclass(frozen=True)
class Skippable(Spec):
    """``spec``, or ``{"skipped": why}``; ``why``: when it is skipped (a report renders it as not applicable)."""

    spec: Spec
    why: str

    def check(self, value: Any, where: str) -> None:
        if isinstance(value, dict) and "skipped" in value:
            STR.check(value["skipped"], _child(where, "skipped"))
        else:
            self.spec.check(value, where)


@dataclasses.dataclass(frozen=True)
class Rows(Spec):
    """A JSON array of results rows, each fitting ``spec`` and ``_consistent``; a row's path names it."""

    spec: Spec

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, list):
            raise _Problem(where, f"must be an array, got {_kind(value)}")
        for i, row in enumerate(value):
            name = row.get("name") if isinstance(row, dict) else None
            at = f"{where}[{i}]" + (f" ({name})" if isinstance(name, str) else "")
            self.spec.check(row, at)
            _consistent(row, at)


def _consistent(row: dict, where: str) -> None:
    """The headline model attack's canary detection (with canaries) and epsilon audits are there: the tables read
    them by its name. (Both hold every attack, or none: canaries_detected, empirical_epsilon in ``assess``.)"""
    pick = row["headline"]["model"]
    if pick is None:
        return
    attack, detected, audits = pick["attack"], row["canary_detection"], row["empirical_epsilon"]
    if detected and attack not in detected:
        raise _Problem(
            _child(_child(where, "canary_detection"), attack),
            "missing (the headline model attack's: the table reads it)",
        )
    if attack not in audits:
        raise _Problem(
            _child(_child(where, "empirical_epsilon"), attack),
            "missing (the headline model attack's: the table reads it)",
        )
    if detected and "canaries" not in audits[attack]:
        raise _Problem(
            _child(_child(_child(where, "empirical_epsilon"), attack), "canaries"),
            "missing: the run has canaries (canary_detection is not empty)",
        )


def _metrics() -> dict[str, Spec]:
    """AUC and the TPR columns, each with its interval (``metrics.summarize_examples``, ``headline.headline``)."""
    out: dict[str, Spec] = {}
    for name in METRICS:
        # An AUC is always defined on a slice with members and non-members; a TPR is not below the FPR floor.
        out[name] = NUM if name == "auc" else Nullable(NUM, "below the FPR floor (rendered 'below floor')")
        for end in ("low", "high"):
            out[f"{name}_ci_{end}"] = Nullable(NUM, "no interval: the point estimate is null, or no draw is defined")
    return out


SUMMARY = Record(_metrics())  # One attack on one slice: metrics.summarize_examples.
SLICE = Skippable(SUMMARY, "a slice without members or without non-members (assess.slice_summaries)")
INTERVAL = ListOf(Nullable(NUM, "no defined draw"), length=2)
HEADLINE_PICK = Record(
    {
        **_metrics(),
        "attack": STR,
        "attack_by_cell": MapOf(STR),
        "fpr_floor": NUM,
        "samples": ListOf(Nullable(NUM, "a degenerate bootstrap draw")),  # Paired row contrasts.
        f"{HEADLINE}_ci_examples": INTERVAL,
        f"{HEADLINE}_ci_two_way": INTERVAL,
    }
)
_TINY = "a cross-fitting cell without member or non-member trials (a tiny pool)"
HEADLINES = Record(
    {
        "model": Nullable(HEADLINE_PICK, f"no cross-fitted headline: {_TINY}"),
        "release": Nullable(HEADLINE_PICK, f"no release attack (only condensed rows release a set), or {_TINY}"),
    }
)
UTILITY = Record({"test_accuracy_mean": NUM, "test_accuracy_std": NUM, "test_accuracy": ListOf(NUM)})  # [M] targets
SHOKRI = Nullable(Record({"mean": NUM, "std": NUM}), "an export without Shokri's inputs (no shadows, no bank sample)")
NULL_TEST = Record({"draws": INT, "excluded": INT, "allowed": INT, "passed": BOOL})  # null.null_test
CANARIES = MapOf(Record({"detected": INT, "members": INT, "false_positives": INT, "nonmembers": INT}))  # {}: none.
AUDIT = Record({"epsilon_lower_bound": NUM})
EPSILONS = MapOf(Record({"natural": AUDIT, "canaries": Optional(AUDIT, "a run without canaries")}))
DP = Record({"epsilon": NUM, "noise_multiplier": NUM, "epsilon_pld": NUM, "epsilon_rdp": NUM})
MOVEMENT = Record(
    {
        "synthetic_to_nearest_real": Record({"median": NUM}),
        "real_to_nearest_real": Record({"median": NUM}),
        "median_ratio": Nullable(NUM, "private images whose median spacing is 0"),
    }
)
ROC = Record({"fpr": ListOf(NUM), "tpr": ListOf(NUM)})
# Where an attack run's export (its floats) was made (``host.provenance``): commit None outside a git checkout.
PROVENANCE = Record({"commit": Nullable(STR, "not run from a git checkout"), "cpu": STR, "backend": STR})
_NO_PROVENANCE = "runs made before stop 27 (2026-12-06) did not record it"

# A results row as the tables read it (``tables``; one attack run's results make one, ``tables.run_document``).
ROW = Record(
    {
        "name": STR,
        "utility": UTILITY,
        "shokri_accuracy": SHOKRI,
        "natural": MapOf(SLICE),  # Every attack on the natural slice.
        "headline": HEADLINES,
        "null_test": NULL_TEST,
        "canary_detection": CANARIES,
        "empirical_epsilon": EPSILONS,
        "dp": Optional(DP, "DP-SGD rows only"),
        "movement": Optional(
            MOVEMENT, "condensed rows only, and not in rows attacked before image movement was recorded"
        ),
        "row": Optional(STR, "frontier points only (study.plan_points): the row the point is a point of"),
        "iteration": Optional(INT, "ladder points only: the point's condensation iterations"),
        "provenance": Optional(PROVENANCE, _NO_PROVENANCE),
    }
)
# A study's row (``study._row_summary``): the table row plus what the document and figures add.
STUDY_ROW = Record(
    {
        **ROW.fields,
        "description": STR,
        "roc_headline": Nullable(ROC, "no model headline"),
    }
)
ABOUT = {"tier": STR, "command": STR, "machine": STR}  # The study's header (``study.run_study``'s ``about``).
STUDY = Record(
    {
        **ABOUT,
        "wall_seconds": NUM,
        "report_command": Optional(STR, "only a study whose report was regenerated (--report_only)"),
        "rows": Rows(STUDY_ROW),
        "poster_protocol": Optional(
            MapOf(Record({"mean": NUM, "std": NUM, "mode": STR})),
            "only where the original row learns Shokri from the bank (study._with_poster_protocol)",
        ),
    }
)
# One attack run's results.json (``attack_run.evaluate_export``).
RUN = Record(
    {
        "schema": INT,
        "config": Record({"recipe": Record({"kind": STR})}),
        "utility": Record({**UTILITY.fields, "member_accuracy": NUM, "nonmember_accuracy": NUM}),
        "shokri_accuracy": SHOKRI,
        "attacks": MapOf(Record({"natural": SLICE})),
        "headline": HEADLINES,
        "null_test": NULL_TEST,
        "canary_detection": CANARIES,
        "empirical_epsilon": EPSILONS,
        "roc": MapOf(ROC),
        "provenance": Optional(PROVENANCE, _NO_PROVENANCE),
    }
)
TABLE_ROWS = Record({"rows": Rows(ROW)})  # What a table reads: rows only.


def _check(spec: Spec, results: Any, source: str) -> None:
    try:
        spec.check(results, "")
    except _Problem as e:
        raise SchemaError(source, e.field or "(the whole)", e.problem) from None


def check_run(results: Any, source: str = "attack run results") -> None:
    """SchemaError naming the field (and ``source``, the file) unless ``results`` is an attack run's of schema
    ``RUN_SCHEMA`` holding every field the report reads (``RUN``)."""
    _check(RUN, results, source)
    try:
        _consistent(results, "")
    except _Problem as e:
        raise SchemaError(source, e.field, e.problem) from None
    if results["schema"] != RUN_SCHEMA:
        raise SchemaError(
            source, "schema", f"is {results['schema']}; the report reads {RUN_SCHEMA} (regenerate: --report_only)"
        )


def check_rows(results: Any, source: str = "results") -> None:
    """SchemaError naming the field unless every row of ``results["rows"]`` holds what the tables read (``ROW``)."""
    _check(TABLE_ROWS, results, source)


def check_study(results: Any, source: str = "study results") -> None:
    """SchemaError naming the field (and ``source``, the file) unless ``results`` is a study's holding every field
    its document and figures read (``STUDY``), the poster's protocol covering every row but its own."""
    _check(STUDY, results, source)
    protocol = results.get("poster_protocol")
    for i, row in enumerate(results["rows"] if protocol is not None else []):
        if row["name"] != TRAINED_ON and row["name"] not in protocol:
            field = _child("poster_protocol", row["name"])
            raise SchemaError(source, field, f"missing: rows[{i}] is {row['name']} (every row but {TRAINED_ON})")


def check_about(about: Any) -> None:
    """SchemaError unless a study's ``about`` holds its header (``ABOUT``: tier, command, machine)."""
    _check(Record(ABOUT), about, "the study's about")


def read_run(path: str) -> dict:
    """An attack run's results.json at ``path``, checked (``check_run``: errors name the file)."""
    results = checkpoint.read_json(path)
    check_run(results, path)
    return results


def read_study(path: str) -> dict:
    """A study's results.json at ``path``, checked (``check_study``: errors name the file)."""
    results = checkpoint.read_json(path)
    check_study(results, path)
    return results
