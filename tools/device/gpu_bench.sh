#!/bin/bash
# GPU run, part B (right after part A, on the same machine): joins the model, waits for the llama-cpp-python
# CUDA build, and runs `llama-medusa bench` with the CUDA backbone. Carry: .gpu2 (model.part2).
set -x
export PYTHONUNBUFFERED=1
mkdir -p /root/.cache/llama-medusa
cat /root/gpu/model.part1 .gpu2/model.part2 > /root/.cache/llama-medusa/SmolLM2-135M-Instruct.Q4_1.gguf
md5sum /root/.cache/llama-medusa/SmolLM2-135M-Instruct.Q4_1.gguf  # a1231443440b107ff29f02bdb38c9d0a
for i in $(seq 1 100); do grep -q BUILD-DONE /root/lcp.log && break; sleep 5; done
tail -3 /root/lcp.log
python3 -m llama_medusa.commands.cli bench --n-gpu-layers -1 --runs 5 --max-tokens 128 --sweep --json $OUT/bench_cuda.json 2>&1 | tail -40 | tee $OUT/bench_cuda.txt
