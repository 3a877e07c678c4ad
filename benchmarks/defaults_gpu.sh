#!/usr/bin/env bash
# Issue 11 benchmark on the lent GPU: the plain commands, 3 seeds (benchmarks/defaults.py).
set -u
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD RTDEPLOY_CACHE_DIR=/tmp/cache PYTHONUNBUFFERED=1
nvidia-smi -L; echo "cores $(nproc)"
A="--data .gpu/ucm64 --device cuda --jobs 16 --criteria l1 --variants half --runs-dir /tmp/bench"
(while sleep 40; do tar czf $OUT/partial.tgz --exclude='*.pt' --exclude='*.last' -C /tmp bench 2>/dev/null; done) &
timeout ${BUDGET:-280} python3 -m benchmarks.defaults $A; echo "bench rc=$?"
python3 -m benchmarks.defaults $A --collect-only --results-dir $OUT/results
tar czf $OUT/runs.tgz --exclude='*.pt' --exclude='*.last' -C /tmp bench
