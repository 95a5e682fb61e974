#!/usr/bin/env bash
# The GPU check, on the GPU host, in one run (issue 11 §5); scripts/device/prepare.sh prepares it
# and prints the runs that carry what it needs. From the repository root:
#
#     bash scripts/device/gpu_check.sh [gpu_check.py options]
#
# 1. installs the carried wheels ($WHL/small) into $SITE (CPython 3.12 only: elsewhere the
#    current environment must already hold the service's packages);
# 2. reassembles onnxruntime-gpu from its parts (/tmp/ortgpu, left by the earlier runs, and
#    $WHL/parts), checks it against $WHL/manifest.txt and unpacks it into $SITE;
# 3. puts the CUDA 13 libraries of the host's torch (site-packages/nvidia/*) on LD_LIBRARY_PATH,
#    where onnxruntime-gpu and the service's subprocesses find them;
# 4. runs scripts/device/gpu_check.py (export, engines, service), which writes
#    $OUT/gpu_check.json as it goes; $OUT/gpu_check.log holds everything printed.
# Each step has a time limit; the whole stays under 8 minutes. Exit status: gpu_check.py's
# (2: no CUDA here), or 1 when it could not run at all (the JSON then says why).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 1
OUT=${OUT:-$REPO/gpu-check-out}
SITE=${SITE:-/tmp/site}
PARTS_DIR=${PARTS_DIR:-/tmp/ortgpu}
PYTHON=${PYTHON:-python3}
WHL=${WHL:-.whl}  # what prepare.sh made and the run carried
BUDGET_S=${BUDGET_S:-400}
mkdir -p "$OUT" "$SITE" "$PARTS_DIR"
LOG=$OUT/gpu_check.log
exec > >(tee -a "$LOG") 2>&1
started=$(date +%s)
install_notes=()
note() { install_notes+=("$1"); echo "gpu_check.sh: $1"; }

pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null)

install_small() {
    local wheels=("$WHL"/small/*.whl)
    if [[ ! -e "${wheels[0]}" ]]; then
        note "no carried wheels ($WHL/small): using the packages already installed"
    elif [[ "$pyver" != "3.12" ]]; then
        note "carried wheels are for CPython 3.12, this is $pyver: using the packages installed"
    elif timeout 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
            --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"; then
        note "installed ${#wheels[@]} carried wheels into $SITE"
    else
        note "installing the carried wheels failed (see the log)"
    fi
}

manifest_field() { awk -v kind="$1" -v name="$2" '$1 == kind && $2 == name { print $3 }' "$WHL"/manifest.txt; }

install_ort_gpu() {
    if [[ ! -f "$WHL"/manifest.txt ]]; then
        note "no $WHL/manifest.txt: onnxruntime-gpu not installed (run prepare.sh's runs first)"
        return
    fi
    if [[ "$pyver" != "3.12" ]]; then
        note "onnxruntime-gpu not installed: its parts are a CPython 3.12 build, this is $pyver"
        return
    fi
    cp -f "$WHL"/parts/ortgpu.part* "$PARTS_DIR"/ 2>/dev/null
    local missing=() names
    mapfile -t names < <(awk '$1 == "part" { print $2 }' "$WHL"/manifest.txt)
    for name in "${names[@]}"; do
        local want have
        want=$(manifest_field part "$name")
        have=$(sha256sum "$PARTS_DIR/$name" 2>/dev/null | cut -d' ' -f1)
        [[ "$have" == "$want" ]] || missing+=("$name")
    done
    if (( ${#missing[@]} )); then
        note "onnxruntime-gpu not installed: parts missing or damaged in $PARTS_DIR: ${missing[*]} (the host went cold between runs? redo those runs, then this one)"
        return
    fi
    local archive=/tmp/ortgpu.tar.xz
    (cd "$PARTS_DIR" && cat "${names[@]}") > "$archive"
    if [[ "$(sha256sum "$archive" | cut -d' ' -f1)" != "$(manifest_field archive ortgpu.tar.xz)" ]]; then
        note "onnxruntime-gpu not installed: the reassembled archive's SHA-256 differs from the manifest"
        return
    fi
    rm -rf "$SITE"/onnxruntime "$SITE"/onnxruntime_gpu-*.dist-info
    if timeout 120 tar -xJf "$archive" -C "$SITE"; then
        note "installed $(awk '$1 == "wheel" { print $2 }' "$WHL"/manifest.txt) into $SITE"
    else
        note "unpacking onnxruntime-gpu failed"
    fi
    rm -f "$archive"
}

cuda_libraries() {  # the nvidia/* library folders of the host's torch, for onnxruntime-gpu
    timeout 60 "$PYTHON" - <<'EOF'
import pathlib, site, sys
dirs = []
for root in site.getsitepackages() + [site.getusersitepackages()]:
    base = pathlib.Path(root) / "nvidia"
    if base.is_dir():
        dirs += sorted({str(p.parent) for p in base.rglob("lib*.so*")})
print(":".join(dirs))
EOF
}

echo "gpu_check.sh: $(date -u +%FT%TZ) in $REPO, python $pyver ($PYTHON), OUT=$OUT"
install_small
install_ort_gpu
libs=$(cuda_libraries)
if [[ -n "$libs" ]]; then
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    note "CUDA libraries from site-packages/nvidia on LD_LIBRARY_PATH ($(tr ':' '\n' <<< "$libs" | wc -l) folders)"
else
    note "no site-packages/nvidia libraries found (onnxruntime-gpu then needs CUDA 13 on the system)"
fi
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
GPU_CHECK_INSTALL=$(printf '%s; ' "${install_notes[@]}")
GPU_CHECK_INSTALL=${GPU_CHECK_INSTALL%; }
export GPU_CHECK_INSTALL

left=$(( BUDGET_S - ($(date +%s) - started) ))
timeout --kill-after=10 $(( left + 40 )) "$PYTHON" scripts/device/gpu_check.py \
    --out "$OUT/gpu_check.json" --budget-s "$left" "$@"
status=$?
if [[ ! -s "$OUT/gpu_check.json" ]]; then
    printf '{"error": "gpu_check.py exited with %s before writing its report", "install": "%s"}\n' \
        "$status" "${GPU_CHECK_INSTALL//\"/\'}" > "$OUT/gpu_check.json"
    status=1
fi
echo "gpu_check.sh: exit $status after $(( $(date +%s) - started )) s; report: $OUT/gpu_check.json"
exit "$status"
