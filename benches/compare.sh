#!/usr/bin/env bash
# The crate against PyTorch, one training step, run alternately (A B A B …) so that both see
# the same machine load; prints each pair's ratio and the median ratio (crate / PyTorch;
# below 1 means the crate is faster).
#
#   benches/compare.sh                       # mlp at batch 512 and 4096, unet at 64; 5 pairs
#   PAIRS=7 benches/compare.sh mlp:512 unet:64
#
# THREADS (default 2) sets both sides' threads; STEPS and WARMUP the steps per run. The
# PyTorch side runs through benches/reference/run.sh (which makes its virtualenv once), with
# glibc's malloc set as the crate's `backend::tune_allocator` sets it for the crate's side
# (mmap threshold 32 MiB, trim threshold 1 GiB), so that both reuse freed memory alike.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
pairs="${PAIRS:-5}"
threads="${THREADS:-2}"
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(mlp:512 mlp:4096 unet:64)

cargo bench --bench step_time --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*step_time[^"]*"' | tail -1 | cut -d'"' -f4 > /tmp/step_time_bin.$$
crate_bin="$(cat /tmp/step_time_bin.$$)"; rm -f /tmp/step_time_bin.$$
[ -x "$crate_bin" ] || { echo "could not build benches/step_time.rs" >&2; exit 1; }
benches/reference/run.sh mlp 8 --steps 1 --warmup 0 >/dev/null   # make the venv first

median() { sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
ms() { sed -n 's/.*median_ms=\([0-9.]*\).*/\1/p'; }

for case in "${cases[@]}"; do
    model="${case%%:*}"; batch="${case##*:}"
    steps="${STEPS:-$([ "$model" = unet ] && echo 20 || echo 50)}"
    warmup="${WARMUP:-5}"
    ratios=()
    echo "== $model batch $batch, $threads threads, $steps steps per run, $pairs pairs"
    for ((i = 1; i <= pairs; i++)); do
        a=$(RAYON_NUM_THREADS=$threads "$crate_bin" "$model" "$batch" --steps "$steps" \
            --warmup "$warmup" 2>/dev/null | ms)
        b=$(GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824 \
            benches/reference/run.sh "$model" "$batch" --steps "$steps" --warmup "$warmup" \
            --threads "$threads" | ms)
        r=$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", a / b}')
        ratios+=("$r")
        echo "pair $i: crate ${a} ms, pytorch ${b} ms, ratio ${r}"
    done
    echo "$model batch $batch: median ratio $(printf '%s\n' "${ratios[@]}" | median)"
done
