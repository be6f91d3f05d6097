#!/bin/bash
# The GPU checks of issue 14 in one call. On the lent GPU machine, from the repository root,
# after bench/gpu/make_bundle.sh here (carry .dev and .gl):
#   LIM=540 OUT=$OUT bash bench/gpu/run.sh
# prints the adapter, then (each step under its share of LIM seconds, every row as it is measured):
#   0. bench/conv_styles.ts: the convolutions in both GEMM styles (tiled, register 16x16), which
#      tells whether the tiled style really is the one for a GPU;
#   1. bench/kernels.ts on webgpu: kernel GFLOP/s, host cost of a tiny kernel (stock and ours),
#      one mnist SiDA iteration (batch 64, rounds of 32) profiled per kernel;
#   2. bench/distill.ts: the mnist SiDA iteration at batch 64;
#   3. bench/distill.ts: the CIFAR-10 DDPM++ (56M) SiDA iteration at batch 32.
# Stops at once (exit 3) when Deno finds no hardware adapter. To test the script's logic here on
# llvmpipe with tiny sizes: SIDA_GPU_TEST=1 OUT=/tmp/gpu-test bash bench/gpu/run.sh
# What we learnt on an H200 (2026-11-26): the Vulkan ICD there (libGLX_nvidia.so.0) is found only
# with the driver's folder on LD_LIBRARY_PATH.
T0=$(date +%s); LIM=${LIM:-540}; OUT=${OUT:-/tmp/out}; TEST=${SIDA_GPU_TEST:-0}; mkdir -p "$OUT"
left() { echo $((LIM - ($(date +%s) - T0))); }
exec > >(tee "$OUT/log.txt") 2>&1
if compgen -G ".gl/*.deb" >/dev/null; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg} DENO_NO_UPDATE_CHECK=1; mkdir -p "$XDG_RUNTIME_DIR"
R="deno run -A"
if [ -f .dev/bundle.tar.xz ]; then
  mkdir -p /tmp/d && tar -xJf .dev/bundle.tar.xz -C /tmp/d
  export DENO_DIR=/tmp/d/devdeno PATH=/tmp/d:$PATH; R="deno run -A --cached-only"
fi
nvidia-smi -L 2>/dev/null
SIDA_GPU_TEST=$TEST deno eval 'const a = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
const soft = !a || (a.info.isFallbackAdapter ?? a.isFallbackAdapter) || /llvmpipe|swiftshader|software/i.test(a.info.description);
console.log("adapter:", a ? `${a.info.vendor} ${a.info.device} ${a.info.description}${soft ? " (software)" : ""}` : "none");
if (!a || (soft && Deno.env.get("SIDA_GPU_TEST") !== "1")) Deno.exit(3);' || exit 3
if [ "$TEST" = 1 ]; then # tiny sizes: checks the steps and their output, not speed
  K="--sections tiny,sida --sida-batch 2 --sida-micro 1 --replay-repeats 1"
  # (CIFAR-10 at batch 1 would take ~10 min on llvmpipe: its step checks the skip path instead)
  M="--batch 2 --max-seconds 1000"; C="--batch 1 --max-seconds 60"
else
  K="--batch 64 --repeats 3 --sida-batch 64 --sida-micro 32"
  M="--max-seconds 100000"; C="--batch 32 --max-seconds 100000"
fi
echo "== 0. convolutions per GEMM style (webgpu) =="
timeout $(($(left) / 8)) $R bench/conv_styles.ts --styles tiled,register:16x16
echo "== 1. kernels (webgpu) =="
timeout $(($(left) / 3)) $R bench/kernels.ts --backends webgpu $K --json "$OUT/kernels.json"
echo "== 2. mnist SiDA iteration (webgpu) =="
timeout $(($(left) / 2)) $R bench/distill.ts --backends webgpu --configs mnist --iters 1 $M \
  --json "$OUT/distill-mnist.json"
echo "== 3. CIFAR-10 DDPM++ SiDA iteration (webgpu) =="
timeout $(($(left) - 5)) $R bench/distill.ts --backends webgpu --configs cifar10 --iters 1 $C \
  --json "$OUT/distill-cifar10.json"
echo "done after $(($(date +%s) - T0)) s"
