#!/usr/bin/env bash
# One prepared run for a lent GPU machine (one H200, 15 minutes of device time per session, at most
# 10 minutes per command): the Triton max-pool's exactness on CUDA, then bench/gpu.py within its
# 8-minute budget, with Ray from the stripped bundle when it travelled along.
#
# Here, before the device call (once):   bench/ray_bundle.sh .raybundle     # ignored by git, 28 MB
# The device call (run tool):            command "bash bench/gpu_session.sh", carry [".raybundle"],
#                                        timeout_s 590
# Results come back under $OUT: gpu.json (every number), gpu.log, pytest.log.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bluff-gpu-out}
mkdir -p "$OUT"
PY=${PY:-python3}

if [ -f .raybundle/ray-stripped.tar.xz ]; then
  mkdir -p /tmp/site && tar -xJf .raybundle/ray-stripped.tar.xz -C /tmp/site &&
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .raybundle/wheels/*.whl &&
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} || echo "the Ray bundle did not install"
  $PY -c 'import ray; print("ray", ray.__version__, "from", ray.__file__)' || echo "ray does not import"
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  echo "no .raybundle: the pipeline stage will be skipped"
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv || true
$PY -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())'

# The Triton kernels against PyTorch's CUDA max-pool, float64, ties (the CPU suite cannot run them).
timeout 90 $PY -m pytest -q -p no:cacheprovider tests/test_fast_step.py -k "cuda or pool or conv_relu" 2>&1 | tee "$OUT/pytest.log" | tail -5

# Everything else: FLOPs, each variant's rate, memory, agreement, kernel families, compute_unit, pipeline.
# reference+compile (measured once: 12,445 image-steps/s) and fast+compile are left out: each compile
# costs ~90 s of the budget that compute_unit and the pipeline need
timeout 480 $PY bench/gpu.py --budget-s 420 --variants reference,fast,lean,lean+graphs,fast+graphs,lean+compile \
  --out "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
echo "exit $?"
