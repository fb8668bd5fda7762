"""dcjax.keys: the named key streams, pinned (recorded results depend on their positions)."""

import jax
import numpy as np

from dcjax.condense import run as condense_run
from dcjax import keys
from dcjax.privacy import attack_data


def test_the_key_layouts_are_pinned():
    """Recorded results depend on these positions: appending is allowed, reordering is not."""
    root = jax.random.key(7)
    data = lambda k: jax.random.key_data(k)  # noqa: E731
    for i, name in enumerate(keys.CONDENSE):
        np.testing.assert_array_equal(data(condense_run._keys(7)[name]), data(jax.random.fold_in(root, i)))
    for i, name in enumerate(keys.ATTACK):
        np.testing.assert_array_equal(data(attack_data.run_keys(7)[name]), data(jax.random.fold_in(root, i)))
    assert keys.CONDENSE[:2] == ("init", "iterations") and keys.ATTACK[3] == "models"
    np.testing.assert_array_equal(data(keys.item(root, 5)), data(jax.random.fold_in(root, 5)))
