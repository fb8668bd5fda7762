#!/usr/bin/env bash
# Two DC processes at once, each pinned to its own core: the throughput of one pipeline per core.
cd /work/main && . .venv/bin/activate
D=docs/benchmarks/2026-12-08-issue26
taskset -c 0 python benchmarks/condense_step.py --methods=dc --configs=32:10:2 --repeats=6 > $D/dc32_pinned_pair_core0.log 2>&1 &
taskset -c 1 python benchmarks/condense_step.py --methods=dc --configs=32:10:2 --repeats=6 > $D/dc32_pinned_pair_core1.log 2>&1 &
wait
echo done
