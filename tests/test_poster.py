"""The poster's protocol (dcjax.privacy.poster): Shokri's classifiers of the original row applied to another
row's targets, on tests/test_shokri_bank.py's synthetic exports."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_shokri_bank import FAST, KEYS, K, M, _chance_tolerance, _export

from dcjax.privacy import attack_data, poster, shokri_bank


@pytest.fixture(scope="module")
def informative():
    """An original row whose members are more confident, and its own classifiers."""
    d = _export()
    return d, shokri_bank.train_classifiers(d, FAST, KEYS)


@pytest.mark.slow  # Its fixture trains the original row's classifiers (~6 s).
def test_the_poster_protocol_applies_the_original_rows_classifiers(informative):
    """Against itself the protocol is the original row's own accuracy; against targets whose members look
    like the original's non-members it falls below chance (the poster's 41 %), which classifiers trained on
    that row itself would not (they would learn the inverted relation)."""
    original, params = informative
    inverted = _export("members_unsure", seed=1, examples=original.shokri_examples)
    out = poster.protocol(original, {"same": original, "inverted": inverted})
    np.testing.assert_array_equal(out["same"]["per_target"], shokri_bank.accuracy(params, original, FAST, KEYS))
    tolerance = _chance_tolerance(original)
    assert out["inverted"]["mean"] < 0.5 - tolerance, out["inverted"]
    assert shokri_bank.shokri_accuracy(inverted, FAST, KEYS).mean() > 0.5 + tolerance
    assert out["inverted"]["trained_on"] == "original" and len(out["inverted"]["per_target"]) == M


def test_the_poster_protocol_refuses_rows_of_another_split(informative):
    original, _ = informative
    cases = {
        "seed": dataclasses.replace(original, config={**original.config, "seed": 1}),
        "keep masks": dataclasses.replace(original, keep=original.keep[::-1]),
        "Shokri subsample": dataclasses.replace(original, shokri_examples=original.shokri_examples + 1),
        "target labels": dataclasses.replace(original, target_labels=(original.target_labels + 1) % K),
        "Shokri-from-the-bank": dataclasses.replace(original, shokri_examples=np.zeros(0, np.int32)),
    }
    for what, other in cases.items():
        with pytest.raises(ValueError, match=what):
            poster.protocol(original, {"other": other})


def test_the_study_protocol_needs_an_original_row_from_the_bank(informative, tmp_path):
    original, _ = informative
    for name, d in (("original", original), ("dc_real", _export("members_unsure", seed=2))):
        (tmp_path / name).mkdir()
        attack_data.save(str(tmp_path / name / attack_data.EXPORT), dataclasses.replace(d, config=original.config))
    assert poster.study_protocol(str(tmp_path), ["dc_real"]) is None  # No original row.
    with_shadows = dataclasses.replace(
        original, shokri_examples=np.zeros(0, np.int32), shokri_target_logits=np.zeros((0, original.keep.shape[1], K))
    )
    (tmp_path / "shadows" / "original").mkdir(parents=True)
    attack_data.save(str(tmp_path / "shadows" / "original" / attack_data.EXPORT), with_shadows)
    assert poster.study_protocol(str(tmp_path / "shadows"), ["original", "dc_real"]) is None
    with pytest.raises(ValueError, match="Shokri subsample"):  # dc_real drew its own subsample: not one split.
        poster.study_protocol(str(tmp_path), ["original", "dc_real"])
