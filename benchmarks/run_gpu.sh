#!/usr/bin/env bash
# Every GPU check and benchmark in one go, for a lent GPU machine (one call, logs under $OUT or ./gpu_results).
# Usage: bash benchmarks/run_gpu.sh [quick]   (PyTorch, onnx and onnxruntime must already be installed there)
set -uo pipefail
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, onnxruntime; print('torch', torch.__version__, 'ort', onnxruntime.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider test/test_cuda.py 2>&1 | tee "$OUT/pytest_cuda.log" | tail -15
python3 benchmarks/bench_train.py --modes baseline fp32-graph graph fast --batch-sizes 4 32 > "$OUT/bench_train.json"
python3 -c "import json,sys; [print(r) for r in json.load(open(sys.argv[1]))['results']]" "$OUT/bench_train.json"
python3 benchmarks/bench_inference.py --backends torch --device cuda --repeats 300 > "$OUT/bench_inference.json"
python3 -c "import json,sys; [print({k: v for k, v in r.items() if k != 'machine'}) for r in json.load(open(sys.argv[1]))['results']]" "$OUT/bench_inference.json"
if [ "${1:-}" != quick ]; then
  timeout 300 python3 benchmarks/bench_train.py --modes amp bf16-graph compile-networks-graph --batch-sizes 4 32 > "$OUT/bench_train_compile.json"
  python3 -c "import json,sys; [print(r) for r in json.load(open(sys.argv[1]))['results']]" "$OUT/bench_train_compile.json"
fi
