"""The privacy study's rows share one setting and differ only in their recipe and training."""

import dataclasses
import json

import pytest

from dcjax import checkpoint, workdir
from dcjax.privacy import study


def test_rows_share_the_attack_setting_and_change_only_recipe_and_training():
    config = study.StudyConfig()
    rows = {name: study.row_config(config, name) for name in study.ROWS}
    assert rows["original"].train == config.train_original
    assert all(rows[n].train == config.train_small for n in ("subset", "dc_noise", "dc_real"))
    assert rows["subset"].recipe.per_class == config.per_class
    assert rows["dc_noise"].recipe.condense.init == "noise"
    assert rows["dc_real"].recipe.condense.init == "real"
    for row in rows.values():  # Same seed, pools, bank: the same split and keep masks.
        assert dataclasses.replace(row, recipe=config.attack.recipe, train=config.attack.train) \
            == config.attack


@pytest.mark.parametrize("rows", [(), ("original", "original"), ("dsa",)])
def test_bad_row_lists_are_rejected(rows):
    with pytest.raises(ValueError, match="rows"):
        study.StudyConfig(rows=rows)


def test_a_row_finished_with_other_settings_is_not_reused(tmp_path):
    config = study.StudyConfig()
    row_dir = tmp_path / "subset"
    row_dir.mkdir()
    other = dataclasses.replace(study.row_config(config, "subset"), seed=1)
    checkpoint.write_json(str(row_dir / workdir.CONFIG), dataclasses.asdict(other))
    (row_dir / workdir.RESULTS).write_text(json.dumps({"finished": True}))
    with pytest.raises(workdir.WorkdirError, match="row subset"):
        study._run_row(config, "subset", None, (None, None), str(tmp_path))
    checkpoint.write_json(str(row_dir / workdir.CONFIG),
                          dataclasses.asdict(study.row_config(config, "subset")))
    assert study._run_row(config, "subset", None, (None, None), str(tmp_path)) == {"finished": True}
