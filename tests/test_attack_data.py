"""The attack export (dcjax.privacy.attack_data): format 2's size at the poster's scale, round trips, format 1."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from dcjax import checkpoint, host
from dcjax.privacy import attack_data, attacks, lira, masks, metrics, rmia, shokri

M, Q, N, K, P, NA, SHADOWS = 6, 2, 40, 5, 12, 30, 2
FORMAT1_LOGITS = ("target_logits", "population_logits", "shadow_logits")


def _logits(seed: int, *shape) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (3 * rng.normal(size=shape)).astype(np.float32)


def _format1_fields(release: bool = True) -> dict:
    """Keyword arguments of ``attack_data.from_logits``: the arrays of a tiny format-1 export."""
    rng = np.random.default_rng(0)
    keep = masks.lira_keep_masks(jax.random.key(0), M, N)
    return {
        "config": {"recipe": {"kind": "condense" if release else "subset"}, "seed": 3},
        "preprocessing": {"dataset": "mnist"},
        "pool_indices": {"target": list(range(N)), "attacker": list(range(N, N + NA)), "population_test": [7] * P},
        "target_logits": _logits(1, M, Q, N, K),
        "population_logits": _logits(2, M, Q, P, K),
        "shadow_logits": _logits(3, SHADOWS, Q, NA, K),
        "keep": keep,
        "halves": rng.random((SHADOWS, NA)) < 0.5,
        "target_labels": rng.integers(0, K, N).astype(np.int32),
        "attacker_labels": rng.integers(0, K, NA).astype(np.int32),
        "population_labels": rng.integers(0, K, P).astype(np.int32),
        "canaries": np.arange(3),
        "used": keep & (rng.random((M, N)) < 0.7),
        "nearest_distances": rng.random((M, N)).astype(np.float32).astype(np.float64) if release else np.zeros((0, N)),
        "synthetic_example": rng.random((K, 4, 4, 1)).astype(np.float32) if release else np.zeros(0, np.float32),
        "test_accuracy": rng.random(M + SHADOWS),
        "seconds": rng.random(M + SHADOWS),
    }


def _write_format1(path, fields: dict) -> None:
    """A format-1 file as the old ``save`` wrote it: the logits, and the three dicts as JSON."""
    json_names = ("config", "preprocessing", "pool_indices")
    arrays = {k: v for k, v in fields.items() if k not in json_names}
    arrays.update({f"{k}_json": np.asarray(checkpoint.to_json(fields[k])) for k in json_names})
    checkpoint.write_npz(str(path), compressed=True, **arrays)


def _assert_same(a: attack_data.AttackData, b: attack_data.AttackData) -> None:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "pool_indices":
            assert sorted(x) == sorted(y)
            for k in x:
                assert x[k].dtype == y[k].dtype == np.int32 and np.array_equal(x[k], y[k]), k
        elif isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), f.name
        else:
            assert x == y, f.name


def _scores(d: attack_data.AttackData):
    config = shokri.AttackConfig(hidden=4, steps=10)
    return attacks.compute_scores(d, config, rmia.RMIAConfig(), attack_data.run_keys(0))


def test_poster_scale_scores_fit_in_4_mb_and_round_trip(tmp_path):
    """60,000 examples x 8 models x 2 queries and the default 1,000 population samples: what LiRA, LOSS, RMIA read."""
    m, q, n, p = 8, 2, 60_000, 1000
    rng = np.random.default_rng(0)
    keep = rng.random((m, n)) < 0.5
    d = attack_data.AttackData(
        config={"recipe": {"kind": "original"}},
        preprocessing={},
        pool_indices={"target": rng.permutation(n).astype(np.int32), "population_test": np.arange(p, dtype=np.int32)},
        num_classes=10,
        # Random mantissas: the float32 bytes that zlib cannot compress (real scores compress a little better).
        target_phi=rng.normal(0, 4, (m, q, n)).astype(np.float32),
        population_phi=rng.normal(0, 4, (m, q, p)).astype(np.float32),
        correct=rng.random((m, n)) < 0.9,
        keep=keep,
        used=keep,
        target_labels=rng.integers(0, 10, n).astype(np.int32),
        population_labels=rng.integers(0, 10, p).astype(np.int32),
        canaries=np.zeros(0, np.int64),
        shokri_target_logits=np.zeros((0, n, 10), np.float32),  # Shokri's part is not counted here.
        shokri_shadow_logits=np.zeros((0, 0, 10), np.float32),
        halves=np.zeros((0, 0), bool),
        attacker_labels=np.zeros(0, np.int32),
        nearest_distances=np.zeros((0, n), np.float32),
        synthetic_example=np.zeros(0, np.float32),
        test_accuracy=np.full(m, 0.99),
        seconds=np.ones(m),
    )
    path = tmp_path / attack_data.EXPORT
    attack_data.save(str(path), d)
    assert os.path.getsize(path) <= 4_000_000, os.path.getsize(path)
    _assert_same(attack_data.load(str(path)), d)


def test_every_field_round_trips_and_the_file_is_plain_numpy(tmp_path):
    d = attack_data.from_logits(**_format1_fields())
    path = tmp_path / attack_data.EXPORT
    attack_data.save(str(path), d)
    _assert_same(attack_data.load(str(path)), d)
    # Decoded as the module docstring says, with NumPy alone.
    with np.load(path) as z:
        assert str(z["format"]) == attack_data.FORMAT and int(z["version"]) == 2
        f32 = lambda planes: np.ascontiguousarray(np.moveaxis(planes, 0, -1)).view("<f4")[..., 0]
        bits = lambda packed, n: np.unpackbits(packed, axis=-1, count=n).astype(bool)
        np.testing.assert_array_equal(f32(z["target_phi_planes"]), d.target_phi)
        np.testing.assert_array_equal(f32(z["shokri_shadow_logits_planes"]), d.shokri_shadow_logits)
        np.testing.assert_array_equal(bits(z["keep_bits"], z["target_labels"].size), d.keep)
        np.testing.assert_array_equal(bits(z["halves_bits"], z["attacker_labels"].size), d.halves)


def test_phi_is_the_true_class_score_of_the_logits():
    fields = _format1_fields()
    d = attack_data.from_logits(**fields)
    phi = lira.logit_scale(fields["target_logits"], fields["target_labels"], example_axis=2)
    np.testing.assert_array_equal(d.target_phi, phi.astype(np.float32))
    np.testing.assert_array_equal(d.shokri_target_logits, fields["target_logits"][:, 0])
    correct = np.argmax(fields["target_logits"][:, 0], -1) == fields["target_labels"]
    np.testing.assert_array_equal(d.correct, correct)


def test_scores_without_release_are_the_model_attacks_of_the_full_scores():
    """What the null test rescores (``release=False``): the same model attack scores, bitwise, and no release ones."""
    d = attack_data.from_logits(**_format1_fields())
    config, keys = shokri.AttackConfig(hidden=4, steps=10), attack_data.run_keys(0)
    full, accuracy = attacks.compute_scores(d, config, rmia.RMIAConfig(), keys)
    model_only, _ = attacks.compute_scores(d, config, rmia.RMIAConfig(), keys, (full["shokri"], accuracy), False)
    assert set(attacks.RELEASE_ATTACKS) <= set(full)
    assert list(model_only) == list(attacks.model_attacks(full))
    for name, scores in model_only.items():
        np.testing.assert_array_equal(scores, full[name], err_msg=name)


@pytest.mark.slow  # Trains Shokri's classifiers twice (~5 s).
def test_a_format1_export_loads_and_reencodes_to_the_same_scores(tmp_path):
    fields = _format1_fields()
    path = tmp_path / attack_data.EXPORT
    _write_format1(path, fields)
    old = attack_data.load(str(path))
    _assert_same(old, attack_data.from_logits(**fields))
    before, after = attack_data.reencode(str(path))
    assert after == os.path.getsize(path) < before
    new = attack_data.load(str(path))
    _assert_same(old, new)
    (scores_old, acc_old), (scores_new, acc_new) = _scores(old), _scores(new)
    assert list(scores_old) == list(scores_new) and "shokri" in scores_new and "rmia_online" in scores_new
    for name in scores_old:
        np.testing.assert_array_equal(scores_old[name], scores_new[name], err_msg=name)
    np.testing.assert_array_equal(acc_old, acc_new)


def test_float32_phi_moves_the_scores_by_its_rounding_only():
    """The logit-based scores of format 1 and the phi-based ones of format 2: same numbers to ~1e-7 relative."""
    fields = _format1_fields(release=False)
    d = attack_data.from_logits(**fields)
    scores, _ = _scores(d)
    logits, labels = fields["target_logits"], fields["target_labels"]
    phi64 = np.moveaxis(lira.logit_scale(logits, labels, example_axis=2), 1, 2)
    pz = rmia.true_class_probability(fields["population_logits"], fields["population_labels"]).mean(1)
    before = {
        "loss": lira.loss_threshold_scores(logits[:, 0], labels),
        "confidence": lira.confidence_scores(logits[:, 0], labels),
        "lira_online": lira.leave_one_out(phi64, d.keep, lambda *a: lira.lira_online(*a, fixed_variance=False))[0],
        "rmia_online": rmia.leave_one_out_rmia(
            rmia.true_class_probability(logits, labels, example_axis=2).mean(1), pz, d.keep, rmia.RMIAConfig()
        ),
    }
    # LiRA divides by per-example stds of a few shadows, which can magnify phi's 6e-8 relative rounding.
    # RMIA: the dominated count is the same; only its tie-break (the likelihood ratio itself) moves by rounding.
    rtol = {"loss": 1e-6, "confidence": 1e-6, "lira_online": 1e-3, "rmia_online": 1e-6}
    for name, old in before.items():
        np.testing.assert_allclose(scores[name], old, rtol=rtol[name], atol=1e-12, err_msg=name)
        assert metrics.trial_metrics(scores[name], d.keep) == metrics.trial_metrics(old, d.keep), name
    num_population = pz.shape[1]
    np.testing.assert_array_equal(
        np.floor(scores["rmia_online"] * num_population), np.floor(before["rmia_online"] * num_population)
    )


def test_an_export_without_shokri_inputs_is_scored_without_shokri(tmp_path):
    d = attack_data.from_logits(**_format1_fields(release=False))
    k, na = d.shokri_shadow_logits.shape[:2]
    d = dataclasses.replace(
        d, shokri_target_logits=np.zeros((0, N, K), np.float32), shokri_shadow_logits=np.zeros((0, na, K), np.float32)
    )
    path = tmp_path / attack_data.EXPORT
    attack_data.save(str(path), d)
    loaded = attack_data.load(str(path))
    assert not loaded.has_shokri and "shokri" not in attacks.attack_names(loaded)
    scores, accuracy = _scores(loaded)
    assert "shokri" not in scores and "loss" in scores and accuracy.shape == (0,)


def test_validate_checks_the_new_shapes():
    d = attack_data.from_logits(**_format1_fields())
    bad = {
        "target_phi": d.target_phi[:, :, 1:],
        "population_phi": d.population_phi[:, :1],
        "correct": d.correct[1:],
        "shokri_target_logits": d.shokri_target_logits[:, :, 1:],
        "shokri_shadow_logits": np.zeros((0, NA, K), np.float32),  # The targets' half alone.
        "nearest_distances": d.nearest_distances[1:],
        "test_accuracy": d.test_accuracy[1:],
    }
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            attack_data.validate(dataclasses.replace(d, **{name: value}))
    with pytest.raises(ValueError, match="target_phi must be finite float32"):
        attack_data.validate(dataclasses.replace(d, target_phi=d.target_phi.astype(np.float64)))
    with pytest.raises(ValueError, match="target_labels"):
        attack_data.validate(dataclasses.replace(d, target_labels=np.full(N, K)))


def _rewrite(path, drop: str = "", **replace) -> None:
    with np.load(path) as z:
        fields = {k: z[k] for k in z.files if k != drop}
    np.savez(path, **{**fields, **replace})


def test_a_damaged_or_missing_field_is_one_line_naming_file_and_field(tmp_path):
    path = str(tmp_path / attack_data.EXPORT)
    attack_data.save(path, attack_data.from_logits(**_format1_fields()))
    with np.load(path) as z:
        planes = z["population_phi_planes"]
    cases = [
        ({"drop": "keep_bits"}, "keep_bits"),
        ({"population_phi_planes": planes[:3]}, "population_phi_planes"),
        ({"population_phi_planes": planes.astype(np.int16)}, "population_phi_planes"),
        ({"used_bits": np.zeros((M, 1), np.uint8)}, "used"),
        ({"version": np.asarray(3, np.int32)}, "version"),
    ]
    for change, field in cases:
        attack_data.save(path, attack_data.from_logits(**_format1_fields()))
        _rewrite(path, **change)
        with pytest.raises(ValueError) as info:
            attack_data.load(path)
        message = str(info.value)
        assert message.startswith(path) and field in message and "\n" not in message, message


def test_a_corrupt_member_names_the_field(tmp_path):
    path = str(tmp_path / attack_data.EXPORT)
    attack_data.save(path, attack_data.from_logits(**_format1_fields()))
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    with zipfile.ZipFile(path, "w") as z:  # Stored, so the flipped bytes reach the .npy header.
        for name, data in members.items():
            z.writestr(name, data[:20] if name == "keep_bits.npy" else data)
    with pytest.raises(ValueError, match="keep_bits"):
        attack_data.load(path)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = sorted(
    os.path.join(dirpath, attack_data.EXPORT)
    for dirpath, _, files in os.walk(os.path.join(ROOT, "docs"))
    if attack_data.EXPORT in files
)


def test_the_committed_exports_encode_to_their_own_fields():
    """Shokri from the bank added an optional field: every committed export decodes and re-encodes to exactly the
    arrays it holds (an export with shadows: no new field, same bytes), so its scores come from the same inputs."""
    assert COMMITTED, "no committed exports under docs/"
    for path in COMMITTED:
        d = attack_data.load(path)
        assert d.has_shokri, path
        # With shadows Shokri scores every trial; from the bank (the poster tier) it reports accuracy only.
        assert ("shokri" in attacks.attack_names(d)) != d.shokri_from_bank, path
        encoded = attack_data._encode(d)
        with np.load(path) as z:
            assert sorted(encoded) == sorted(z.files), path
            for name in z.files:
                a = encoded[name]
                assert a.dtype == z[name].dtype and np.array_equal(a, z[name]), (path, name)


def _bank_fields(s: int = 20) -> dict:
    """``_format1_fields`` without shadows: Shokri from the bank on ``s`` pool examples."""
    fields = _format1_fields()
    fields.update(
        shadow_logits=np.zeros((0, Q, 0, K), np.float32),
        halves=np.zeros((0, 0), bool),
        attacker_labels=np.zeros(0, np.int32),
        test_accuracy=fields["test_accuracy"][:M],
        seconds=fields["seconds"][:M],
        shokri_examples=np.sort(np.random.default_rng(5).permutation(N)[:s]),
    )
    fields["pool_indices"]["attacker"] = []
    return fields


def test_a_bank_export_keeps_shokri_logits_of_its_subsample_only(tmp_path):
    fields = _bank_fields()
    d = attack_data.from_logits(**fields)
    assert d.shokri_from_bank and d.shokri_examples.dtype == np.int32
    np.testing.assert_array_equal(d.shokri_target_logits, fields["target_logits"][:, 0, fields["shokri_examples"]])
    path = tmp_path / attack_data.EXPORT
    attack_data.save(str(path), d)
    _assert_same(attack_data.load(str(path)), d)
    with np.load(path) as z:
        np.testing.assert_array_equal(z["shokri_examples"], fields["shokri_examples"])
    # An export with shadows writes no such field (its file is what it was before the field existed).
    attack_data.save(str(path), attack_data.from_logits(**_format1_fields()))
    with np.load(path) as z:
        assert "shokri_examples" not in z.files


def test_a_bank_export_is_validated():
    d = attack_data.from_logits(**_bank_fields())
    e = d.shokri_examples
    bad = {
        "increasing": {"shokri_examples": e[::-1].copy()},
        "in \\[0, 40\\)": {"shokri_examples": np.r_[e[:-1], N].astype(np.int32)},
        "shokri_target_logits": {"shokri_target_logits": d.shokri_target_logits[:, 1:]},
        "beside Shokri shadows": {
            "halves": np.zeros((1, 0), bool),
            "shokri_shadow_logits": np.zeros((1, 0, K), np.float32),
            "test_accuracy": np.ones(M + 1),
            "seconds": np.ones(M + 1),
        },
        "shokri_target_logits is empty": {"shokri_target_logits": np.zeros((0, e.size, K), np.float32)},
    }
    for match, changes in bad.items():
        with pytest.raises(ValueError, match=match):
            attack_data.validate(dataclasses.replace(d, **changes))


def test_poster_scale_with_shokri_from_the_bank_adds_its_subsample_only(tmp_path):
    """8 pipelines' query-0 logits on S = 2,000 of the 60,000 examples: 0.64 MB, not 19 MB."""
    m, n, s, k = 8, 60_000, 2000, 10
    rng = np.random.default_rng(0)
    keep = rng.random((m, n)) < 0.5
    d = attack_data.AttackData(
        config={"recipe": {"kind": "original"}},
        preprocessing={},
        pool_indices={
            "target": rng.permutation(n).astype(np.int32),
            "population_test": np.arange(1000, dtype=np.int32),
        },
        num_classes=k,
        target_phi=rng.normal(0, 4, (m, 2, n)).astype(np.float32),
        population_phi=rng.normal(0, 4, (m, 2, 1000)).astype(np.float32),
        correct=rng.random((m, n)) < 0.9,
        keep=keep,
        used=keep,
        target_labels=rng.integers(0, k, n).astype(np.int32),
        population_labels=rng.integers(0, k, 1000).astype(np.int32),
        canaries=np.zeros(0, np.int64),
        shokri_target_logits=rng.normal(0, 4, (m, s, k)).astype(np.float32),
        shokri_shadow_logits=np.zeros((0, 0, k), np.float32),
        halves=np.zeros((0, 0), bool),
        attacker_labels=np.zeros(0, np.int32),
        nearest_distances=np.zeros((0, n), np.float32),
        synthetic_example=np.zeros(0, np.float32),
        test_accuracy=np.full(m, 0.99),
        seconds=np.ones(m),
        shokri_examples=np.sort(rng.permutation(n)[:s]).astype(np.int32),
    )
    path = tmp_path / attack_data.EXPORT
    attack_data.save(str(path), d)
    # The 4 MB of the scores (test_poster_scale_scores_fit_in_4_mb_and_round_trip) and the raw float32 logits.
    assert os.path.getsize(path) <= 4_000_000 + m * s * k * 4, os.path.getsize(path)
    _assert_same(attack_data.load(str(path)), d)


# Scores a committed export's Shokri accuracies (argv[1]: its directory) and prints them as JSON.
_SCORE_SHOKRI = """
import json, os, sys
from dcjax.privacy import attack_data, attacks, rmia, shokri
d = attack_data.load(os.path.join(sys.argv[1], attack_data.EXPORT))
keys = attack_data.run_keys(d.config["seed"])
config, rmia_config = shokri.AttackConfig(**d.config["attack"]), rmia.RMIAConfig(**d.config["rmia"])
scores, accuracy = attacks.compute_scores(d, config, rmia_config, keys)
print(json.dumps({"shokri": "shokri" in scores, "per_target": [float(a) for a in accuracy]}))
"""


@pytest.mark.slow  # Trains the committed run's Shokri classifiers (16 x 1,000 rows, 2,000 steps: ~15 s).
def test_a_committed_export_with_an_attacker_pool_scores_shokri_as_recorded():
    """The attack_sanity run (8 shadows on an attacker pool): its Shokri accuracies as its results.json recorded
    them, bitwise on the platform its provenance names (CPU model and vector extensions, jax, backend), to 0.01
    elsewhere (another CPU rounds the classifiers' training otherwise). Scored in a process compiled as a user's
    run is (golden.user_env), not with the test session's XLA flags (conftest.py)."""
    import golden

    directory = os.path.join(ROOT, "docs", "results", "attack_sanity_cpu")
    results = checkpoint.read_json(os.path.join(directory, "results.json"))
    recorded = results["shokri_accuracy"]
    platform_of = lambda p: (p["cpu"], p["jax"], p["backend"])  # noqa: E731
    made_here = platform_of(results["provenance"]) == platform_of(host.provenance())
    proc = subprocess.run(
        [sys.executable, "-c", _SCORE_SHOKRI, directory],
        env=golden.user_env(ROOT),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = json.loads(proc.stdout.strip().splitlines()[-1])
    assert scored["shokri"] and "mode" not in recorded
    tolerance = 0.0 if made_here else 0.01
    np.testing.assert_allclose(scored["per_target"], recorded["per_target"], rtol=0, atol=tolerance)
