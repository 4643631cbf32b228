#!/bin/sh
# Runs the bench from an unpacked GPU kit on a machine with a GPU and no package registry.
# Usage: run.sh OUT_DIR [bench options...]   (default adapter: gpu; e.g. run.sh /tmp/out --quick)
# Writes OUT_DIR/info.json and OUT_DIR/<gpu>.json, .md and .svg (the bench's report), and prints the table.
set -eu
KIT=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: run.sh OUT_DIR [bench options...]}
shift
mkdir -p "$OUT"
export PATH="$KIT/node/bin:$PATH"

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
node --import tsx src/cli.ts info --json --adapter "$ADAPTER" > "$OUT/info.json"
# The report's file name: the adapter's description, as a file-name-safe slug.
NAME=$(node -e 'const i = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).adapter;
  const text = [i.description || i.device || i.vendor, i.backend].join(" ");
  console.log(text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 60) || "gpu")' "$OUT/info.json")
node --import tsx src/cli.ts bench --adapter "$ADAPTER" --json "$OUT/$NAME.json" "$@"
echo "kit: results in $OUT/$NAME.json, .md and .svg" >&2
