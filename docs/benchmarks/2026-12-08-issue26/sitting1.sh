#!/usr/bin/env bash
# Issue 26 deliverable 5: the DM iteration at width 128, ipc 10, in fresh processes, the reference and dcjax alternating.
set -uo pipefail
export DC_REPO=/tmp/w/s44/dc PYTHON=/tmp/w/s44/tvenv/bin/python DC_OUT=/tmp/w/s44/var/out QUIET_MAXWAIT=60
cd /work/main && . .venv/bin/activate
for i in 1 2 3; do
  (cd /work/shared/peers/reference_dc && ./run_timed.sh dm_ipc10_p$i dm --ipc 10 --iterations 21 --warmup 1 --budget 300 --dsa_compat_shim)
  python benchmarks/condense_step.py --methods=dm --configs=128:10 --repeats=5 > /tmp/w/s44/var/dcjax_p$i.log 2>&1
done
echo done
