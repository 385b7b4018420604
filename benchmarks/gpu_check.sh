#!/usr/bin/env bash
# The GPU section, as one script for a machine with a CUDA device and PyTorch already installed (it uses
# that machine's python3 and packages; attnlab runs from this checkout via PYTHONPATH, nothing installed):
#   1. tests/test_attention_cuda.py: fused backend on CUDA vs the float64 reference, forward and gradients;
#   2. a short training run of the GPT on CUDA for each normalizer (loss must fall);
#   3. benchmarks/attention.py --device cuda (bfloat16, against SDPA's flash backend).
# Results go to ${OUT:-results/gpu}/.   Usage: bash benchmarks/gpu_check.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1
out="${OUT:-results/gpu}"
mkdir -p "$out"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.total --format=csv,noheader || true

echo "== 1. CUDA exactness tests"
timeout 150 python3 -m pytest tests/test_attention_cuda.py -q --tb=line -p no:cacheprovider -W ignore 2>&1 \
  | tee "$out/cuda_tests.txt" | tail -30

echo "== 2. training on CUDA"
for norm in softmax softmax1 sinks adaptive clipped ssmax; do
  timeout 60 python3 -m attnlab train --text README.md --normalizer "$norm" --layers 2 --d-model 128 \
    --context 128 --steps 40 --device cuda --out "/tmp/gpu_train_$norm" --overwrite 2>&1 | tail -2
done 2>&1 | tee "$out/cuda_train.txt"

echo "== 3. attention benchmark on CUDA"
timeout 300 python3 benchmarks/attention.py --device cuda --json "$out/bench_attention_cuda.json" 2>&1 \
  | tee "$out/bench_attention_cuda.txt" | grep -v "^  cuda seq"
