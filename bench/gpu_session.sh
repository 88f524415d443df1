#!/usr/bin/env bash
# What issue 5 asks of a lent GPU, in two calls of the device tool (each under its 10 minutes):
#   run(command="bash bench/gpu_session.sh report", carry=[".whl"])  the main job, the CUDA tests
#   run(command="bash bench/gpu_session.sh bench", carry=[".whl"])   accuracy, repeatability,
#                                                                     allocator snapshots
# .whl holds wheels of what the GPU machine's image lacks (fvcore, iopath, yacs, termcolor,
# torchinfo; built here with `pip wheel --no-deps`). Results go to $OUT (default ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD:/tmp/site
else
  export PYTHONPATH=$PWD
fi
stage() { echo "=== $1 ($(date +%T))"; }
case "${1:-report}" in
report)
  {
    stage gpu
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch; print('torch', torch.__version__, 'cuDNN', torch.backends.cudnn.version())"
    stage report
    time timeout 420 python3 -m nin_profile --batch 128 --device cuda \
      --sweep-batch 1,32,128,256 --max-batch --out "$OUT/report" 2>&1 | grep -v '^USDT'
    (cd "$OUT" && tar czf report.tgz report && rm -rf report)
    stage cuda-tests
    timeout 170 python3 -m pytest -m cuda -v -p no:cacheprovider 2>&1 | grep -E "PASS|FAIL|SKIP|Error|assert|^E " | head -60
    stage end
  } 2>&1 | tee "$OUT/report.log"
  ;;
bench)
  {
    stage accuracy
    timeout 260 python3 bench/memory_accuracy.py --device cuda --csv "$OUT/accuracy.csv" 2>/dev/null
    stage repeatability
    timeout 150 python3 bench/repeatability.py --device cuda 2>/dev/null
    stage snapshots
    timeout 120 python3 bench/memory_snapshot.py record --batches 128,256 --out "$OUT/snap" 2>/dev/null
    (cd "$OUT" && tar czf snap.tgz snap && rm -rf snap)
    stage end
  } 2>&1 | tee "$OUT/bench.log"
  ;;
esac
