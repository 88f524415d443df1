#!/usr/bin/env bash
# Everything issue 5 asks of a lent GPU, in one call of the device tool:
#   run(command="bash bench/gpu_session.sh", carry=[".whl"])   (wheels only where packages miss)
# Results go to $OUT (default ./gpu-out); copy the report folder into reports/<gpu-name>/.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -m cuda -q 2>&1 | tee "$OUT/pytest-cuda.log" | tail -5
python3 -m pytest -q -x 2>&1 | tail -3 | tee "$OUT/pytest-all.log"
python3 -m nin_profile --batch 128 --device cuda --sweep-batch 1,32,128,256 --max-batch \
  --out "$OUT/report" 2>&1 | tee "$OUT/report.log" | tail -40
python3 bench/memory_accuracy.py --device cuda --csv "$OUT/accuracy.csv" 2>/dev/null \
  | tee "$OUT/accuracy.md"
(cd "$OUT" && tar czf report.tgz report && rm -rf report)
