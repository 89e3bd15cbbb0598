#!/bin/bash
# GPU run, part A: starts the CUDA build of llama-cpp-python in the background (part B uses it), builds
# llama-medusa's GPU module, runs the GPU tests (kernels against their CPU counterparts) and `llama-medusa gpu-bench`.
# Carry: .gpu (lcp-slim.tar.gz, gguf/diskcache wheels, build_llama_cpp_python_cuda.sh, model.part1).
set -x
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
mkdir -p /root/gpu && cp .gpu/* /root/gpu/
setsid nohup bash -c "bash /root/gpu/build_llama_cpp_python_cuda.sh /root/gpu/lcp-slim.tar.gz > /root/lcp.log 2>&1; echo BUILD-DONE >> /root/lcp.log" > /dev/null 2>&1 < /dev/null &
python3 -m pip install -q --no-deps --no-index /root/gpu/gguf-*.whl /root/gpu/diskcache-*.whl
CMAKE_BUILD_PARALLEL_LEVEL=4 python3 -m pip install -q --no-build-isolation --no-deps . 2>&1 | tail -5
cd /tmp && python3 -c "import llama_medusa._gpu as g; print(g.backend, g.device_count(), g.device_name(), 'warp', g.warp_size(), 'mma', g.mma_available())"
cd - > /dev/null
python3 -m pytest tests/test_gpu.py tests/test_ternary.py -q -rs -p no:cacheprovider 2>&1 | tail -15 | tee $OUT/tests_gpu.txt
timeout 120 compute-sanitizer --tool memcheck python3 tools/device/sanitize_case.py 2>&1 | tail -4
python3 -m llama_medusa.commands.cli gpu-bench --reps 20 --json $OUT/gpu_bench.json 2>&1 | tee $OUT/gpu_bench.txt
tail -2 /root/lcp.log
