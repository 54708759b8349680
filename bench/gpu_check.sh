#!/usr/bin/env bash
# The GPU check of condense-nb (one H100/H200, under 10 minutes): gsplat parity, rasterizer and ray-marcher ratios,
# teacher step time and MFU at `full` shapes in bf16, FiT3D and point-MAE throughput, data-parallel teacher.
# Writes one JSON (default gpu_check.json); see bench/gpu_check.py for the steps and the options.
#   bash bench/gpu_check.sh [OUT.json] [--peak-tflops 989] [--step-timeout 150]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-gpu_check.json}"; shift || true
exec python bench/gpu_check.py --out "$out" --device cuda "$@"
