#!/usr/bin/env bash
# The CUDA path on a GPU machine that has no Rust toolchain: build here, run there.
#
#   scripts/gpu-check.sh build   # here (x86-64): builds the CUDA test subset, the quickstart
#                                # and the step-time bench with --features cuda into
#                                # target/gpu-bundle/bins.tar.xz (cudarc loads the driver at
#                                # run time, so no CUDA is needed to build)
#   scripts/gpu-check.sh run     # on the GPU machine, from the repository root, with
#                                # target/gpu-bundle carried over; writes logs under $OUT
#
# `run` executes tests/cuda.rs (the backend against the CPU, training on the GPU), the
# quickstart with --device cuda, and the UNet training step at batch 128 alternately with the
# PyTorch reference of the same step on the same GPU (benches/reference/reference.py, PAIRS
# pairs, default 3); it prints each pair's ratio and, last, `gpu unet batch=128 median
# ratio=<crate/PyTorch>`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bundle=target/gpu-bundle

# The executable a cargo command builds, from its JSON messages.
executable() {
    cargo "$@" --message-format=json | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -1
}

case "${1:-}" in
build)
    mkdir -p "$bundle"
    cp "$(executable test --release --features cuda --test cuda --no-run)" "$bundle/cuda_tests"
    cp "$(executable build --release --features cuda --example quickstart)" "$bundle/quickstart"
    cp "$(executable bench --features cuda --bench step_time --no-run)" "$bundle/step_time"
    strip "$bundle"/cuda_tests "$bundle"/quickstart "$bundle"/step_time
    # Compressed, so that the bundle fits the device tool's 64 MiB carry limit.
    tar -C "$bundle" -cJf "$bundle/bins.tar.xz" cuda_tests quickstart step_time
    rm "$bundle"/cuda_tests "$bundle"/quickstart "$bundle"/step_time
    ls -l "$bundle"
    ;;
run)
    out="${OUT:-/tmp/gpu-check}"
    pairs="${PAIRS:-3}"
    mkdir -p "$out"
    bins="${TMPDIR:-/tmp}/gpu-bundle"
    mkdir -p "$bins"
    tar -C "$bins" -xJf "$bundle/bins.tar.xz"
    bundle="$bins"
    for bin in cuda_tests quickstart step_time; do
        [ -x "$bundle/$bin" ] || { echo "missing $bundle/$bin: run '$0 build' first" >&2; exit 1; }
    done
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
    echo "== tests/cuda.rs"
    "$bundle/cuda_tests" --test-threads=1 2>&1 | tee "$out/tests.log"
    echo "== quickstart --device cuda"
    "$bundle/quickstart" --device cuda --out "$out/quickstart" 2>"$out/quickstart.err" \
        | tee "$out/quickstart.log"
    echo "== unet step, batch 128, $pairs pairs"
    ms() { sed -n 's/.*median_ms=\([0-9.]*\).*/\1/p'; }
    ratios=()
    for ((i = 1; i <= pairs; i++)); do
        a=$("$bundle/step_time" unet 128 --steps 20 --warmup 5 --device cuda 2>/dev/null | ms)
        b=$(python3 benches/reference/reference.py unet 128 --steps 20 --warmup 5 \
            --device cuda | ms)
        r=$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", a / b}')
        ratios+=("$r")
        echo "pair $i: crate ${a} ms, pytorch ${b} ms, ratio ${r}" | tee -a "$out/unet.log"
    done
    median=$(printf '%s\n' "${ratios[@]}" | sort -g \
        | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}')
    echo "gpu unet batch=128 median ratio=$median" | tee -a "$out/unet.log"
    ;;
*)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
