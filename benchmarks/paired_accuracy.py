r"""A speed change's accuracy check: two condensation runs' final test accuracies paired by evaluation model.

Both runs must use the same seed, so evaluation model i trains from the same key in each: the pairs share their
initialisation and data order, and only the synthetic set differs. Prints each pair's difference (after - before, in
points), their mean and its 95 % t-interval (as docs/RESULTS.md's bf16 and forward-lowering checks).

  python benchmarks/paired_accuracy.py --before=docs/results/dm_cpu_older.json --after=docs/results/dm_cpu.json
"""

import json

from absl import app
from absl import flags

from dcjax import evaluation

FLAGS = flags.FLAGS


def main(_):
    runs = {}
    for side, path in (("before", FLAGS.before), ("after", FLAGS.after)):
        with open(path) as f:
            runs[side] = json.load(f)["final"]["accuracies"]
    diffs, mean, low, high = evaluation.paired_difference(runs["before"], runs["after"])
    means = {side: 100 * sum(a) / len(a) for side, a in runs.items()}
    print(f"before {means['before']:.2f} %, after {means['after']:.2f} % (mean of {len(diffs)} evaluation models)")
    print(f"after - before: {mean:+.3f} points, 95 % t-interval [{low:+.3f}, {high:+.3f}]")
    print("per pair (points): " + ", ".join(f"{d:+.2f}" for d in diffs))


if __name__ == "__main__":  # Flags only here, as in the other benchmarks.
    flags.DEFINE_string("before", None, "results.json of the run before the change.", required=True)
    flags.DEFINE_string("after", None, "results.json of the run after it (same seed and settings).", required=True)
    app.run(main)
