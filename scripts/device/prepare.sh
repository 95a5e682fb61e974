#!/usr/bin/env bash
# Get the GPU check ready for a host without network (issue 11 §5). Run here, in the checkout
# the device runs will send, with network to PyPI:
#
#     scripts/device/prepare.sh
#
# The host (see .library/device: nvidia-h200) has Python 3.12 with torch for CUDA 13, a CPU-only
# onnxruntime, no network, and takes at most 64 MiB of files per run (the working tree
# included), warm for 30 s after each run. This script
#   1. downloads into .whl/small/ the wheels (CPython 3.12, manylinux x86-64) that the service
#      and the export need and the host lacks (scripts/device/host_packages.txt lists the host's),
#      and checks that their own requirements are met (scripts/device/wheel_deps.py);
#   2. downloads onnxruntime-gpu (a CUDA 13 build, ~256 MB), repacks its files as one xz tar
#      (~190 MiB: one run fewer than the wheel itself) and splits it into parts under
#      PART_MIB (default 56) MiB in .whl/parts/, listed with their SHA-256 in .whl/manifest.txt;
#   3. prints the device runs to make, back to back: one per part (each copied on the host to
#      /tmp/ortgpu, checked), then the check itself (scripts/device/gpu_check.sh), which
#      carries the last part, the small wheels and the manifest.
# .whl/ is git-ignored. Re-running reuses the downloaded onnxruntime-gpu wheel.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WHL=$REPO/.whl
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
ORT_GPU=${ORT_GPU:-onnxruntime-gpu==1.31.1}
PART_MIB=${PART_MIB:-56}
CALL_MIB=64

# The service (fastapi ... soxr, orjson, websockets for /v1/stream), the export (torchlibrosa
# -> librosa), py-spy (for service_probe.sh) and what they need beyond the host's packages.
# Versions: the ones this project's tests run with.
SMALL=(
    fastapi==0.165.0 starlette==1.10.0 annotated-doc==0.0.7 opentelemetry-api==1.45.2
    uvicorn==0.54.0 httptools==0.9.0 h11==0.16.0 click==8.5.1 anyio==4.16.0 idna==3.20
    pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
    typing-inspection==0.4.5 annotated-types==0.8.0 typing-extensions==4.16.0
    python-multipart==0.0.34 prometheus-client==0.26.0 orjson==3.13.0 fastapi-offline==1.7.7
    websockets==17.4
    soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0
    torchlibrosa==0.1.0 librosa==0.11.0 audioread==3.1.0 decorator==5.3.1 pooch==1.9.0
    platformdirs==4.14.9
    py-spy==0.4.3
)
PLATFORMS=()
for n in 5 12 17 24 26 27 28 31 34 35 39; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

download() {  # download DEST SPEC...
    local dest=$1
    shift
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]}" -d "$dest" "$@"
}

mib() { echo "$(( ($1 + 1048575) / 1048576 ))"; }
bytes_of() { stat -c %s "$@" | awk '{ s += $1 } END { print s + 0 }'; }

small_wheels() {
    echo "== 1. wheels the host lacks -> .whl/small"
    rm -rf "$WHL/small"
    mkdir -p "$WHL/small"
    download "$WHL/small" "${SMALL[@]}"
    "$PYTHON" "$REPO/scripts/device/wheel_deps.py" "$WHL/small"
}

ort_parts() {
    echo "== 2. $ORT_GPU -> .whl/parts"
    mkdir -p "$WHL/ort"
    local wheel
    wheel=$(ls "$WHL"/ort/onnxruntime_gpu-*.whl 2>/dev/null | head -1 || true)
    if [[ -z "$wheel" ]]; then
        download "$WHL/ort" "$ORT_GPU"
        wheel=$(ls "$WHL"/ort/onnxruntime_gpu-*.whl | head -1)
    fi
    echo "   $(basename "$wheel"): $(mib "$(bytes_of "$wheel")") MiB"
    local archive=$WHL/ort/ortgpu.tar.xz
    if [[ ! -s "$archive" || "$archive" -ot "$wheel" ]]; then
        local tmp
        tmp=$(mktemp -d)
        "$PYTHON" -m zipfile -e "$wheel" "$tmp/site"
        echo "   repacking as xz (a minute or two) ..."
        tar -C "$tmp/site" -cf - . | xz -T0 -6 > "$archive.tmp"
        mv "$archive.tmp" "$archive"
        rm -rf "$tmp"
    fi
    rm -rf "$WHL/parts"
    mkdir -p "$WHL/parts"
    split -b "${PART_MIB}M" -d -a 1 "$archive" "$WHL/parts/ortgpu.part"
    {
        echo "wheel $(basename "$wheel")"
        echo "archive ortgpu.tar.xz $(sha256sum "$archive" | cut -d' ' -f1) $(bytes_of "$archive")"
        for part in "$WHL"/parts/ortgpu.part*; do
            echo "part $(basename "$part") $(sha256sum "$part" | cut -d' ' -f1)"
        done
    } > "$WHL/manifest.txt"
    echo "   ortgpu.tar.xz: $(mib "$(bytes_of "$archive")") MiB in $(ls "$WHL"/parts | wc -l) parts"
}

tree_bytes() {  # what every run sends besides the carried paths
    (cd "$REPO" && { git ls-files -z; git ls-files -z -o --exclude-standard; } \
        | xargs -0 -r stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
}

plan() {
    echo "== 3. device runs (make them back to back: /tmp on the host lasts only while warm)"
    local tree budget parts n last small_bytes final_bytes
    tree=$(tree_bytes)
    budget=$(( CALL_MIB * 1048576 - tree ))
    mapfile -t parts < <(ls "$WHL"/parts/ortgpu.part* | sort)
    n=${#parts[@]}
    last=${parts[$((n - 1))]}
    small_bytes=$(bytes_of "$WHL"/small/*.whl "$WHL/manifest.txt")
    final_bytes=$(( small_bytes + $(bytes_of "$last") ))
    local carried_last=1
    if (( final_bytes > budget )); then carried_last=0; final_bytes=$small_bytes; fi
    echo "   working tree $(mib "$tree") MiB; at most $(mib "$budget") MiB more per run"
    local k=0 count=$(( n - carried_last + 1 ))
    for part in "${parts[@]}"; do
        (( carried_last )) && [[ "$part" == "$last" ]] && break
        local size sha rel
        size=$(bytes_of "$part")
        (( size <= budget )) || { echo "ERROR: $part is over the per-run budget" >&2; exit 1; }
        sha=$(grep " $(basename "$part") " "$WHL/manifest.txt" | cut -d' ' -f3)
        rel=${part#"$REPO"/}
        k=$(( k + 1 ))
        echo
        echo "run $k/$count  ($(mib "$size") MiB)  timeout_s=120  carry=[\"$rel\"]"
        echo "  command: mkdir -p /tmp/ortgpu && cp $rel /tmp/ortgpu/ && echo '$sha  /tmp/ortgpu/$(basename "$part")' | sha256sum -c"
    done
    local carry="\".whl/small\", \".whl/manifest.txt\""
    (( carried_last )) && carry="\"${last#"$REPO"/}\", $carry"
    echo
    echo "run $count/$count, the check  ($(mib "$final_bytes") MiB)  timeout_s=560  carry=[$carry]"
    echo "  command: bash scripts/device/gpu_check.sh"
    echo
    echo "It writes \$OUT/gpu_check.json (and gpu_check.log). If the host went cold between runs"
    echo "(parts missing), the check still runs PyTorch and says which parts it lacked."
    echo "To see where the service's time goes there: the same runs, then"
    echo "  command: bash scripts/device/service_probe.sh   (py-spy dumps in \$OUT/spy.txt)"
}

small_wheels
ort_parts
plan
