#!/usr/bin/env bash
# Where the service's time goes on the GPU host: the GPU check's service stage (env, export,
# service) with py-spy dumps (native frames too) of the engine and of one front, plus the
# engine's threads' CPU (top) and the GPU's load (nvidia-smi), a few seconds into each load.
# Carried and run like gpu_check.sh (scripts/device/prepare.sh prints the runs; py-spy is among
# the small wheels):
#
#     bash scripts/device/service_probe.sh [gpu_check.py options]
#
# Writes $OUT/spy.txt beside gpu_check.sh's report and log.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 1
OUT=${OUT:-$REPO/gpu-check-out}
SITE=${SITE:-/tmp/site}
export OUT SITE
mkdir -p "$OUT"
SPY=$SITE/bin/py-spy  # installed by gpu_check.sh with the carried wheels

loads_started() { grep -c "s of load" "$OUT/gpu_check.log" 2>/dev/null || true; }

snapshot() {  # snapshot N: the engine and one front, a few seconds into load N
    local engine front
    engine=$(pgrep -f "service.supervisor engine" | head -1)
    front=$(pgrep -f "service.supervisor front" | head -1)
    echo "=== load $1: engine pid ${engine:-none}, front pid ${front:-none}, $(date +%T)"
    [[ -n "$engine" ]] || return
    top -b -n 1 -H -p "$engine" | head -25
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
    for k in 1 2 3; do
        echo "--- engine dump $k"
        timeout 20 "$SPY" dump --native --pid "$engine"
        sleep 0.7
    done
    [[ -n "$front" ]] && { echo "--- front dump"; timeout 20 "$SPY" dump --pid "$front"; }
}

watch_loads() {
    local seen=0 n
    while sleep 1; do
        n=$(loads_started)
        if (( ${n:-0} > seen )); then
            seen=$n
            sleep 6  # past the load's warm-up (4 s)
            snapshot "$n" >> "$OUT/spy.txt" 2>&1
        fi
    done
}

watch_loads &
watcher=$!
BUDGET_S=${BUDGET_S:-220} bash scripts/device/gpu_check.sh --stages env,export,service \
    --service-workers default,4 --service-formats wav32k "$@"
status=$?
kill "$watcher" 2>/dev/null
tail -c 3000 "$OUT/spy.txt" 2>/dev/null
exit "$status"
