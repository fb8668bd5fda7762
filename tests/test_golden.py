"""The recorded digests of tests/golden.py: complete, blind to times and paths only, and (slow tier) equal to a fresh
run of the CPU tiers where this platform has a record.

The digests are bitwise, and float results differ between CPUs of this machine kind (AVX2 or AVX-512), so each
platform has its own record; on a platform without one the comparison is skipped, naming the platform, and
`python tests/golden.py --add` records it once --check has passed on a recorded one (BUILD.md).
"""

import json
import os

import pytest

import golden


def test_every_record_has_every_tier_and_names_its_commit():
    records = golden.read_records()
    assert records, "tests/golden_hashes.json holds no platform"
    for platform, record in records.items():
        assert sorted(record["digests"]) == sorted(golden.TIERS), platform
        assert record["commit"], platform


@pytest.mark.slow  # One shrunk CPU tier each (~20-50 s on 2 cores): one test per tier, so -n workers share them.
@pytest.mark.parametrize("tier", sorted(golden.TIERS))
def test_the_cpu_tier_gives_its_recorded_digest(tier, tmp_path):
    here = golden.platform_id()
    records = golden.read_records()
    if here not in records:
        pytest.skip(f"no digests recorded for this platform ({here}); see tests/golden.py --add")
    digest = golden.run_tier(tier, os.path.dirname(golden.HERE), str(tmp_path))
    assert digest == records[here]["digests"][tier], f"changed since {records[here]['commit']}: python tests/golden.py"


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
