#!/usr/bin/env bash
# One prepared run of every GPU check, for a lent GPU machine (one call, ~8 minutes):
# the CUDA tests, bench_metrics.py --device cuda (FP64 TFLOP/s of the Gram step) and
# bench_analyze.py --device cuda (throughput vs the read-once rate, memory).
#
# The machine's Python lacks zarr, numcodecs and dask: carry them as py3.12 wheels in .whl/
# (see the device tool's README), e.g. from the repo root on the CPU machine:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl zarr numcodecs dask donfig google-crc32c partd locket xarray
# and run there:   bash benchmarks/device_check.sh      (results in $OUT, or /tmp/ftdyn-device)
# A dry run of the mechanics on a CPU machine:
#   DEVICE=cpu SIZE_GB=0.3 QUICK=1 WHEELS=0 PYTHON=.venv/bin/python bash benchmarks/device_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/ftdyn-device}
DEVICE=${DEVICE:-cuda}
SIZE_GB=${SIZE_GB:-4}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if [ "${WHEELS:-1}" = 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, never stop the script
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 25
  echo "== $name: exit ${PIPESTATUS[0]}"
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
step tests 150 $PY -m pytest -q -p no:cacheprovider -k "cuda or gpu" tests/test_metrics.py tests/test_analysis.py
step metrics 200 $PY benchmarks/bench_metrics.py --device "$DEVICE" ${QUICK:+--quick} --json "$OUT/metrics.json"
step analyze 240 $PY benchmarks/bench_analyze.py --device "$DEVICE" --size-gb "$SIZE_GB" --memory-limit 1GB \
  --dir /tmp/ftdyn-bench --json "$OUT/analyze.json"
