"""One process: a DM or DC iteration's seconds, CPU seconds, page faults, context switches and steal ticks, each
iteration (issue 26's one-off probe of 2026-12-08, kept as it ran; DC runs 2 of its 10 outer steps).

  python docs/benchmarks/2026-12-08-issue26/probes/iteration_probe.py dc 32 8      # method, width, iterations
Environment: TAG (a label), MALLOPT="param:value,..." (glibc mallopt calls before jax loads), FTZ=<path of ftz.c
built with gcc -O2 -shared -fPIC> (flush-to-zero and denormals-are-zero on the main thread before XLA's threads start).
"""

import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "benchmarks"))
import ctypes

if os.environ.get("MALLOPT"):
    libc = ctypes.CDLL("libc.so.6")
    for item in os.environ["MALLOPT"].split(","):
        param, value = (int(v) for v in item.split(":"))
        print("mallopt", param, value, libc.mallopt(param, value), file=sys.stderr)
if os.environ.get("FTZ"):
    lib = ctypes.CDLL(os.environ["FTZ"])
    lib.set_ftz_daz()
    print("ftz", hex(lib.get_csr()), file=sys.stderr)
import jax
from dcjax import condense, models
import timing

method, width, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
K, SHAPE = 10, (28, 28, 1)
full_outer, inner = condense.default_loops(10)
cfg = condense.CondenseConfig(ipc=10, outer_loop=full_outer if method == "dm" else 2, inner_loop=inner, method=method)
fns = models.make_model(models.ModelConfig(width=width), SHAPE, K)
pool, index = timing.random_pool(K, SHAPE, 300)
state, _ = condense.init_synthetic(cfg, jax.random.key(1), pool, index)
step = condense.make_iteration_fn(fns, cfg)
rows = []
for t in range(reps + 1):
    st0 = int(open("/proc/stat").readline().split()[8])
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c0 = time.process_time()
    tic = time.perf_counter()
    state, out = step(state, (pool, index), jax.random.key(t))
    jax.block_until_ready(out)
    s = time.perf_counter() - tic
    c = time.process_time() - c0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    rows.append(
        {
            "s": round(s, 3),
            "cpu": round(c, 3),
            "minflt": r1.ru_minflt - r0.ru_minflt,
            "nvcsw": r1.ru_nvcsw - r0.ru_nvcsw,
            "nivcsw": r1.ru_nivcsw - r0.ru_nivcsw,
            "steal": int(open("/proc/stat").readline().split()[8]) - st0,
        }
    )
print(
    json.dumps(
        {
            "env": os.environ.get("TAG", ""),
            "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "iters": rows,
        }
    )
)
