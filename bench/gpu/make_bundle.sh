#!/bin/bash
# Packs what a GPU machine without network access needs to run the benchmarks: the deno binary
# and a DENO_DIR holding every npm package the entry points import, trimmed of what Deno never
# loads (source maps, browser bundles, type declarations), as one xz archive (~37 MB), plus the
# Vulkan loader (libvulkan1) as a .deb. Run from the repository root; writes .dev/ and .gl/
# (both ignored through .git/info/exclude).
set -euo pipefail
grep -qx '/.dev/' .git/info/exclude 2>/dev/null || printf '/.dev/\n/.gl/\n' >>.git/info/exclude
D=$(mktemp -d)/devdeno
DENO_DIR=$D deno cache bench/distill.ts bench/kernels.ts bench/conv_styles.ts tasks/eval.ts tasks/distill.ts \
  tests/nets_parity_test.ts tests/nets_test.ts >/dev/null 2>&1
R=$D/npm/registry.npmjs.org
find "$R" \( -name '*.map' -o -name '*.min.js' -o -name '*.d.ts' \) -delete
find "$R" -path '*dist/miniprogram*' -delete
# tfjs packages are loaded through their CommonJS bundles (package.json "main": dist/*.node.js).
for d in "$R"/@tensorflow/*/*/dist; do find "$d" -mindepth 1 -maxdepth 1 ! -name '*.node.js' -exec rm -rf {} +; done
rm -rf "$R"/mnist/*/dist
: >"$R"/@resvg/resvg-js-linux-x64-musl/2.6.2/resvgjs.linux-x64-musl.node
mkdir -p .dev .gl
tar -cf - -C "$(dirname "$D")" devdeno -C "$(dirname "$(readlink -f "$(command -v deno)")")" deno |
  xz -T2 -9 >.dev/bundle.tar.xz
cp bench/gpu/run.sh .dev/run.sh
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
mkdir -p /tmp/amd64/partial && apt-get $o update >/dev/null && (cd .gl && apt-get $o download libvulkan1)
ls -la .dev .gl
