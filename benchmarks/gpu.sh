#!/usr/bin/env bash
# The paper-size benchmark on a lent GPU machine (benchmarks/README.md, "Paper-size benchmark on one GPU").
#
#   bash benchmarks/gpu.sh fetch              # here, once: wheels of what the device image lacks, into .whl/
#   bash benchmarks/gpu.sh run [paper opts]   # there (carry .whl): install them, run `python -m benchmarks paper
#                                             # --device cuda`, log and record into $OUT
#
# The device image has torch, numpy, scipy, matplotlib, rich, typer, huggingface_hub, tensorstore, pyyaml; it lacks
# zarr and its codecs, MONAI and nibabel (their other requirements are all in the image). Python there is 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 crc32c==2.9.post0 monai==1.6.1
        nibabel==5.4.2)

case "${1:-}" in
fetch)
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
    ;;
run)
    shift
    out="${OUT:-/tmp/paper-out}"
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv || true
    python3 -m benchmarks paper --device cuda --workdir /tmp/paper-work --results "$out/results.jsonl" "$@" \
        2>&1 | tee "$out/paper.log"
    ;;
*)
    echo "usage: bash benchmarks/gpu.sh fetch | run [options of python -m benchmarks paper]" >&2
    exit 2
    ;;
esac
