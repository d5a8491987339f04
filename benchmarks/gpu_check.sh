#!/usr/bin/env bash
# The GPU measurements of docs/speed.md in one call on one GPU (about 5-8 minutes on an H100):
#   bash benchmarks/gpu_check.sh            # writes $OUT/gpu_check.{jsonl,json,csv} and gpu_check.log
#   bash benchmarks/gpu_check.sh --smoke    # the same code paths on a CPU, tiny sizes
# SID_REFERENCE=<checkout of the official SiD code> adds the side-by-side row.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/nvidia-smi.csv" 2>/dev/null || true
ref=()
[ -n "${SID_REFERENCE:-}" ] && ref=(--reference "$SID_REFERENCE")
"$PY" benchmarks/gpu_check.py --out "$OUT" --stop-after "${STOP_AFTER:-420}" "${ref[@]}" "$@" 2>&1 | tee "$OUT/gpu_check.log"
