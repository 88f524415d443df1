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
short)
  # When little device time is left (a measurement costs 5-8 s, most of it cuDNN's start in
  # the fresh process): the main job, then the sweep of the default models, then --max-batch
  # for NiN, each under its own limit so that one running long costs only itself.
  {
    stage main
    timeout 150 python3 -m nin_profile --batch 128 --device cuda --out "$OUT/main" 2>&1 | grep -v '^USDT' | tail -25
    stage sweep
    timeout 270 python3 -m nin_profile --models nin,alexnet,vgg11 --batch 128 --device cuda \
      --sweep-batch 1,32,128,256 --warmup 2 --iterations 10 --out "$OUT/sweep" 2>&1 | grep -v '^USDT' | tail -8
    stage max-batch
    timeout 110 python3 -m nin_profile --models nin --batch 128 --device cuda --max-batch \
      --iterations 10 --out "$OUT/maxbatch" 2>&1 | grep -v '^USDT' | tail -8
    stage repeatability
    timeout 35 python3 bench/repeatability.py --models alexnet --phases train 2>/dev/null
    for d in main sweep maxbatch; do (cd "$OUT" && [ -d $d ] && tar czf $d.tgz $d && rm -rf $d); done
    stage end
  } 2>&1 | tee "$OUT/short.log"
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
