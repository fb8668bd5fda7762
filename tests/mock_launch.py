"""Runs a launcher under tfds.testing.mock_data (no network, no real data).

Usage: python tests/mock_launch.py NUM_EXAMPLES experiments/X.py --flag=...
"""

import os
import runpy
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow_datasets as tfds  # noqa: E402

if __name__ == "__main__":
    num_examples, script, *args = sys.argv[1:]
    sys.argv = [script] + args
    if os.environ.get("DCJAX_MOCK_TICKS") == "0":  # tests/conftest.py: why the suite's launcher runs have none.
        from dcjax import progress

        progress.set_enabled(False)
    with tfds.testing.mock_data(num_examples=int(num_examples)):
        runpy.run_path(script, run_name="__main__")
