"""DC at width 32 (2 outer steps): the same iteration inputs (state, key t mod K) run again and again in one process,
to tell a data-dependent cost from the process's state (issue 26's one-off probe of 2026-12-08, kept as it ran).

  python docs/benchmarks/2026-12-08-issue26/probes/same_inputs_probe.py 9 3      # calls, distinct keys
"""

import json
import os
import sys
import time
import ctypes

if os.environ.get("FTZ"):
    lib = ctypes.CDLL(os.environ["FTZ"])
    lib.set_ftz_daz()
    print("ftz", hex(lib.get_csr()), file=sys.stderr)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "benchmarks"))
import jax
import jax.numpy as jnp
from dcjax import condense, models
import timing

K, SHAPE = 10, (28, 28, 1)
full_outer, inner = condense.default_loops(10)
cfg = condense.CondenseConfig(ipc=10, outer_loop=2, inner_loop=inner, method="dc")
fns = models.make_model(models.ModelConfig(width=32), SHAPE, K)
pool, index = timing.random_pool(K, SHAPE, 300)
state0, _ = condense.init_synthetic(cfg, jax.random.key(1), pool, index)
step = condense.make_iteration_fn(fns, cfg)
state = state0
out = []
for t in range(int(sys.argv[1])):
    tic = time.perf_counter()
    s, o = step(jax.tree.map(jnp.copy, state0), (pool, index), jax.random.key(t % int(sys.argv[2])))
    jax.block_until_ready(o)
    out.append((t % int(sys.argv[2]), round(time.perf_counter() - tic, 2)))
print(json.dumps(out))
