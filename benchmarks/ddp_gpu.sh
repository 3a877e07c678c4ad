#!/usr/bin/env bash
# GPU check for issue 14 (run from the repository root on a CUDA machine; ~5 minutes on one H100):
# the data-parallel benchmark with --device cuda (1 process per GPU; on a 1-GPU machine this is
# the single-process CUDA path with the shared disk cache), writing benchmarks/results/ddp_cuda.*.
set -euo pipefail
export RTDEPLOY_CACHE_DIR="${RTDEPLOY_CACHE_DIR:-$PWD/runs/bench/cache}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0), torch.cuda.device_count(), 'GPU(s)')"
python -m benchmarks.ddp --data "${DATA:-../shared/data/ucmerced}" --device cuda --max-per-class 100 --epochs 2 \
    --repeats 2 --memory-arch resnet18_se --modes disk,memory "$@"
cat benchmarks/results/ddp_cuda.md
