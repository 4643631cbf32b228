#!/bin/sh
# Runs the bench from an unpacked GPU kit on a machine with a GPU and no package registry.
# Usage: run.sh OUT_DIR [--synthetic SHAPE-DTYPE] [bench options...]   (default adapter: gpu)
#   run.sh /tmp/out --quick
#   run.sh /tmp/out --synthetic llama-2-7b-q4_0          (this runtime and llama.cpp on one 7B GGUF)
# --synthetic writes a GGUF of that shape (llama-2-7b, small, tiny) and type (f32, f16, q8_0, q4_0,
# q4_k) with random weights (seed 1) into $WEBGPU_MINER_SYNTH_DIR (default /tmp), or reuses the one
# already there, and runs `bench --model FILE --peer-gpu` on it: llama.cpp on its GPU build (a kit
# built with --llama-cpp vulkan|cuda) on the same file and GPU.
# Writes OUT_DIR/info.json and OUT_DIR/<gpu>.json, .md and .svg (the bench's report), and prints the table;
# then <gpu>-host-toggles.json and <gpu>-workgroup-fill-on|off.json (README: Dawn toggles).
set -eu
KIT=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: run.sh OUT_DIR [--synthetic SHAPE-DTYPE] [bench options...]}
shift
# Take --synthetic NAME out of the arguments; the rest go to bench unchanged (rotated through "$@").
SYNTHETIC=
n=$#
while [ "$n" -gt 0 ]; do
  arg=$1
  shift
  n=$((n - 1))
  if [ "$arg" = --synthetic ]; then
    [ "$n" -gt 0 ] || { echo "kit: --synthetic needs a name such as llama-2-7b-q4_0" >&2; exit 2; }
    SYNTHETIC=$1
    shift
    n=$((n - 1))
  else
    set -- "$@" "$arg"
  fi
done
mkdir -p "$OUT"
# ldconfig lives in sbin, which a bare PATH (cron, env -i, some containers) leaves out.
export PATH="$KIT/node/bin:$PATH:/usr/sbin:/sbin"

# Dawn needs the Vulkan loader; GPU machine images often ship the driver without it.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
  echo "kit: no Vulkan loader on this machine; unpacking the kit's ($(ls "$KIT"/debs))" >&2
  for deb in "$KIT"/debs/*.deb; do dpkg -x "$deb" /; done
  ldconfig
fi
# NVIDIA's container images keep the Vulkan ICD manifest outside the loader's search path.
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi

cd "$KIT"
ADAPTER=${WEBGPU_MINER_ADAPTER:-gpu}
if [ -n "$SYNTHETIC" ]; then
  MODEL="${WEBGPU_MINER_SYNTH_DIR:-/tmp}/synthetic-$SYNTHETIC.gguf"
  if [ -f "$MODEL" ]; then
    echo "kit: reusing $MODEL" >&2
  else
    # Written under another name and moved, so an interrupted write is never taken for a model.
    node --import tsx src/cli.ts synth-model --shape "${SYNTHETIC%-*}" --dtype "${SYNTHETIC##*-}" --seed 1 "$MODEL.partial.gguf" | tee "$OUT/synthetic.txt"
    mv "$MODEL.partial.gguf" "$MODEL"
    echo "kit: wrote $MODEL" >&2
  fi
  set -- --model "$MODEL" --peer-gpu "$@"
fi
# The adapter and the kernel self-check. A failed check does not stop the kit: the bench still runs,
# so that one session on a GPU gives both the failure and the figures, and the failure is repeated last.
SELF_CHECK=passed
node --import tsx src/cli.ts info --json --adapter "$ADAPTER" > "$OUT/info.json" || SELF_CHECK=FAILED
[ -s "$OUT/info.json" ] || { echo "kit: no adapter to run on (info's error above)" >&2; exit 1; }
[ "$SELF_CHECK" = passed ] ||
  echo "kit: the kernel self-check FAILED on this GPU (info.json, selfCheck: the lines with ok false); the bench runs anyway" >&2
# The report's file name: the adapter's description, as a file-name-safe slug.
NAME=$(node -e 'const i = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).adapter;
  const text = [i.description || i.device || i.vendor, i.backend].join(" ");
  console.log(text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 60) || "gpu")' "$OUT/info.json")
node --import tsx src/cli.ts bench --adapter "$ADAPTER" --json "$OUT/$NAME.json" "$@"
# The host side of a decode step again with Dawn's speed toggles on (README: Dawn toggles).
WEBGPU_MINER_DAWN_TOGGLES=skip_validation,disable_robustness \
  node --import tsx src/cli.ts bench --host-only --adapter "$ADAPTER" --json "$OUT/$NAME-host-toggles.json" ||
  echo "kit: the host run with Dawn toggles failed (the main report stands)" >&2
# The Q4_0 decode matvecs with WGSL's zero fill of workgroup memory (which the runtime turns off:
# README, Dawn toggles) and without it, one after the other: what skipping the fill saves on this GPU.
for FILL in on off; do
  if [ "$FILL" = on ]; then TOGGLES=-disable_workgroup_init; else TOGGLES=; fi
  WEBGPU_MINER_DAWN_TOGGLES=$TOGGLES node --import tsx bench/kernels.ts --adapter "$ADAPTER" --shapes llama-7b \
    --kinds matvec --dtypes q4_0 --json "$OUT/$NAME-workgroup-fill-$FILL.json" ||
    echo "kit: the matvec run with the workgroup fill $FILL failed (the main report stands)" >&2
done
echo "kit: results in $OUT/$NAME.json, .md and .svg" >&2
[ "$SELF_CHECK" = passed ] || echo "kit: the kernel self-check FAILED on this GPU: see $OUT/info.json before trusting these figures" >&2
