#!/bin/bash
# Compile-only check of the GPU backend for both vendors (CI has no GPU): hipcc for wave32 RDNA2 (gfx1030) and
# wave64 CDNA2 (gfx90a), nvcc for Hopper (sm_90). Installs Debian's hipcc when missing and apt is usable.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if ! command -v hipcc > /dev/null && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  (apt-get install -y -q hipcc libamdhip64-dev > "$out/apt.log" 2>&1 ||
   (apt-get update -q > /dev/null 2>&1 && apt-get install -y -q hipcc libamdhip64-dev > "$out/apt.log" 2>&1)) ||
    echo "hip/check-build: could not install hipcc (see apt output above)"
fi
status=0
for src in "$here"/*.cu; do
  name=$(basename "$src" .cu)
  if command -v hipcc > /dev/null; then
    HIP_PLATFORM=amd hipcc -x hip --offload-arch=gfx1030 --offload-arch=gfx90a -O3 -std=c++17 -fPIC -Werror=return-type \
      -DMEDUSA_USE_HIP -c "$src" -o "$out/$name.hip.o" || status=1
  fi
  if command -v nvcc > /dev/null; then
    nvcc -arch=sm_90 -O3 -std=c++17 -Xcompiler -fPIC -c "$src" -o "$out/$name.cuda.o" || status=1
  fi
done
echo "hip/check-build: hipcc $(command -v hipcc > /dev/null && echo compiled || echo ABSENT), nvcc $(command -v nvcc > /dev/null && echo compiled || echo ABSENT), status $status"
exit $status
