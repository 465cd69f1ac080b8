#!/usr/bin/env bash
# Wheels the GPU check needs on a machine with no network and no package index (it has torch,
# transformers, safetensors, tokenizers, numpy, pyarrow and pytest, but not these):
#
#     benchmarks/gpu_deps.sh [DIR]        (or: make gpu-deps; DIR defaults to .gpu_deps, git-ignored)
#
# Run it here, with PyPI reachable. It downloads binary wheels only, for manylinux x86_64 and each of
# Python 3.10-3.13 (the device's Python version is not known beforehand), of the project's config
# dependencies (pydantic and what it needs, pyyaml) and rapidfuzz, at the versions installed in .venv
# when there is one (what the tests ran with), and prints the total size: DIR travels with the
# working tree, which is capped at 64 MiB in all (it is git-ignored: name it among the paths carried to
# the device). On the device (see benchmarks/gpu_check.py):
#
#     python -m pip install --no-index --find-links .gpu_deps --target /tmp/gd pydantic pyyaml rapidfuzz 2>/dev/null; python -m pip install --no-index --no-deps --find-links .gpu_deps --target /tmp/gd silero-vad 2>/dev/null; PYTHONPATH=/tmp/gd:. python benchmarks/gpu_check.py --out $OUT
set -euo pipefail

cd "$(dirname "$0")/.."
DIR="${1:-.gpu_deps}"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
PACKAGES=(pydantic pydantic-core annotated-types typing-inspection typing-extensions pyyaml rapidfuzz)
VERSIONS=(3.10 3.11 3.12 3.13)
LIMIT_MIB=64

# pin each package to the version installed here (pydantic pins pydantic-core exactly, so an
# unpinned --no-deps download could fetch a pair that does not install together)
SPECS=()
for p in "${PACKAGES[@]}"; do
    v="$("$PY" - "$p" <<'EOF' 2>/dev/null || true
import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass
EOF
)"
    if [[ -n "$v" ]]; then SPECS+=("$p==$v"); else SPECS+=("$p"); fi
done
echo "gpu-deps: ${SPECS[*]} -> $DIR"

download() {  # download V SPEC...
    local v="$1"; shift
    "$PY" -m pip download --quiet --disable-pip-version-check \
        --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        --python-version "$v" --implementation cp --no-deps -d "$DIR" "$@" >/dev/null 2>&1
}

mkdir -p "$DIR"
MISSING=()
for V in "${VERSIONS[@]}"; do
    if download "$V" "${SPECS[@]}"; then
        echo "gpu-deps: Python $V: ${SPECS[*]}"
        continue
    fi
    # one at a time; a pinned version without a wheel for this Python (rapidfuzz 3.14 has none for
    # 3.10) falls back to the newest one that has
    for spec in "${SPECS[@]}"; do
        name="${spec%%==*}"
        if download "$V" "$spec"; then
            echo "gpu-deps: Python $V: $spec"
        elif download "$V" "$name"; then
            echo "gpu-deps: Python $V: $name (newest with a wheel; $spec has none)"
            if [[ "$name" == pydantic || "$name" == pydantic-core ]]; then
                echo "gpu-deps: WARNING: pydantic and pydantic-core must match; check Python $V" >&2
            fi
        else
            echo "gpu-deps: Python $V: no wheel for $name" >&2
            MISSING+=("$V:$name")
        fi
    done
done

# the vad phase: the silero-vad wheel (pure Python, ~11 MB; installed on the device with --no-deps, as
# it names torch, which is there) and an espeak-ng recording to run it on (speech, pauses, long
# silences, music; int16 at 16 kHz, ~3.8 MB), made here where soundfile decodes the corpus
SV="$("$PY" -c 'from importlib import metadata; print(metadata.version("silero-vad"))' 2>/dev/null || true)"
if "$PY" -m pip download --quiet --disable-pip-version-check --no-deps -d "$DIR" "silero-vad${SV:+==$SV}" \
        >/dev/null 2>&1; then
    echo "gpu-deps: silero-vad${SV:+==$SV}"
else
    echo "gpu-deps: no silero-vad wheel" >&2
    MISSING+=("silero-vad")
fi
if "$PY" - "$DIR/vad_speech.npy" <<'EOF'
import sys

import numpy as np

from operators.audio.decode import decode_audio
from pipelines import demo_corpus

data, _, _, _ = demo_corpus.build_recording(120.0, seed=3, music_s=15.0)
np.save(sys.argv[1], np.round(decode_audio(data) * 32767).astype(np.int16))
EOF
then
    echo "gpu-deps: $DIR/vad_speech.npy (the vad phase's recording)"
else
    echo "gpu-deps: could not make $DIR/vad_speech.npy (the vad phase falls back to babble)" >&2
fi

echo "gpu-deps: wheels in $DIR:"
ls -1 "$DIR"
BYTES="$(du -sb "$DIR" | cut -f1)"
MIB="$(awk -v b="$BYTES" 'BEGIN { printf "%.1f", b / 1048576 }')"
echo "gpu-deps: total ${MIB} MiB ($BYTES bytes) of the ${LIMIT_MIB} MiB that travels with the tree"
if (( BYTES > LIMIT_MIB * 1048576 / 2 )); then
    echo "gpu-deps: WARNING: over half the ${LIMIT_MIB} MiB travel limit; drop a Python version" >&2
fi
if (( ${#MISSING[@]} )); then
    echo "gpu-deps: missing: ${MISSING[*]}" >&2
    exit 1
fi
