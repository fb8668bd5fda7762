"""Two DC pipelines (width 32, 2 outer steps) at once on 2 fake CPU devices of one process: seconds per pair of
iterations (issue 26's one-off probe of 2026-12-08, kept as it ran).

  python docs/benchmarks/2026-12-08-issue26/probes/two_devices_probe.py 7      # pairs
"""

import json
import os
import sys
import time

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "benchmarks"))
import jax
from dcjax import condense, models
import timing

K, SHAPE = 10, (28, 28, 1)
full_outer, inner = condense.default_loops(10)
cfg = condense.CondenseConfig(ipc=10, outer_loop=2, inner_loop=inner, method="dc")
fns = models.make_model(models.ModelConfig(width=32), SHAPE, K)
pool, index = timing.random_pool(K, SHAPE, 300)
step = condense.make_iteration_fn(fns, cfg)
devs = jax.devices()
state0, _ = condense.init_synthetic(cfg, jax.random.key(1), pool, index)
per = [jax.device_put((state0, (pool, index)), d) for d in devs]
states = [p[0] for p in per]
out = []
for t in range(int(sys.argv[1])):
    tic = time.perf_counter()
    res = [step(states[i], per[i][1], jax.device_put(jax.random.key(t), devs[i])) for i in range(2)]
    states = [r[0] for r in res]
    jax.block_until_ready([r[1] for r in res])
    out.append(round(time.perf_counter() - tic, 2))
print(json.dumps({"devices": [str(d) for d in devs], "pair_s": out}))
