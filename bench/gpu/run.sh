#!/bin/bash
# Runs on the GPU machine, from the repository root, after bench/gpu/make_bundle.sh here:
#   LIM=500 OUT=/some/dir bash .dev/run.sh      (carry .dev and .gl)
# WebGPU benchmarks of kernels and of the mnist SiDA iteration. Stops at once when Deno finds no
# hardware adapter. What we learnt on an H200 (2026-11-26): the Vulkan ICD there
# (libGLX_nvidia.so.0) is found only with the driver's folder on LD_LIBRARY_PATH.
T0=$(date +%s); LIM=${LIM:-500}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
left() { echo $((LIM - ($(date +%s) - T0))); }
exec > >(tee "$OUT/log.txt") 2>&1
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mkdir -p /tmp/d /tmp/xdg && tar -xJf .dev/bundle.tar.xz -C /tmp/d
export DENO_DIR=/tmp/d/devdeno PATH=/tmp/d:$PATH XDG_RUNTIME_DIR=/tmp/xdg DENO_NO_UPDATE_CHECK=1
nvidia-smi -L 2>/dev/null
deno eval 'const a = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
const soft = !a || (a.info.isFallbackAdapter ?? a.isFallbackAdapter) || /llvmpipe|swiftshader|software/i.test(a.info.description);
console.log("adapter:", a ? `${a.info.description}${soft ? " (software)" : ""}` : "none");
if (soft) Deno.exit(3);' || exit 3
R="deno run -A --cached-only"
timeout $(($(left) / 2)) $R bench/kernels.ts --backends webgpu --batch 64 --repeats 3 --json "$OUT/kernels.json"
timeout $(($(left) - 10)) $R bench/distill.ts --backends webgpu --configs mnist --iters 2 \
  --max-seconds 100000 --json "$OUT/distill.json"
echo "done after $(($(date +%s) - T0)) s"
