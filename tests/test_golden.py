"""The recorded digests of tests/golden.py: complete, and blind to times and paths only.

The comparison itself (`python tests/golden.py --check`, ~2 min) is not run here: the digests are bitwise, and
float results have differed between CPUs of this machine kind before, so a CI machine with another CPU would fail
on a change it did not make. BUILD.md says when to run it.
"""

import json

import golden


def _recorded() -> dict:
    with open(golden.RECORD) as f:
        return json.load(f)


def test_every_tier_has_a_recorded_digest():
    assert sorted(_recorded()["digests"]) == sorted(golden.TIERS)


def test_digest_ignores_times_and_paths_but_not_results():
    a = {"evals": [{"iteration": 0, "mean": 0.5, "seconds": 1.0, "workdir": "/x"}]}
    b = {"evals": [{"iteration": 0, "mean": 0.5, "seconds": 9.0, "workdir": "/y"}]}
    c = {"evals": [{"iteration": 0, "mean": 0.25, "seconds": 1.0, "workdir": "/x"}]}
    assert golden._results_only(a) == golden._results_only(b) != golden._results_only(c)


def test_digest_sees_one_flipped_bit(tmp_path):
    import numpy as np

    images = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    (tmp_path / "results.json").write_text(json.dumps({"evals": [{"mean": 0.5}]}))
    np.savez(tmp_path / "synthetic.npz", images=images, labels=np.arange(2))
    before = golden.digest(str(tmp_path), "synthetic.npz", ("evals",))
    flipped = images.copy()
    flipped.view(np.uint32)[0, 0, 0] ^= 1  # One ulp of one pixel.
    np.savez(tmp_path / "synthetic.npz", images=flipped, labels=np.arange(2))
    assert golden.digest(str(tmp_path), "synthetic.npz", ("evals",)) != before


def test_digest_leaves_out_config_and_times(tmp_path):
    import numpy as np

    (tmp_path / "results.json").write_text(json.dumps({"attacks": {"auc": 0.6}}))
    digests = []
    for seconds, config in ((1.0, '{"a": 1}'), (7.0, '{"a": 1, "new_field": 2}')):
        np.savez(tmp_path / "attack_data.npz", target_logits=np.ones(3), seconds=np.array(seconds), config_json=config)
        digests.append(golden.digest(str(tmp_path), "attack_data.npz", ("attacks",)))
    assert digests[0] == digests[1]
