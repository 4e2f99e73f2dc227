#!/usr/bin/env bash
# Assemble a CUDA toolkit from PyPI wheels, good enough to BUILD `ablate --features cuda`
# on a machine without a GPU or a system CUDA install. Idempotent: run it again and it
# only re-links. It prints the variables to export at the end (and writes them to
# $ROOT/env.sh, so `. /tmp/ablate-cuda/env.sh` works too).
#
# What the build needs, and where it comes from:
#   - cudarc 0.9's build script: $CUDA_ROOT/include/cuda.h, and at link time
#     libcuda, libnvrtc, libcublas, libcublasLt;
#   - dfdx 0.13's build script: `nvidia-smi` (only for the compute capability) and
#     `nvcc --ptx` for its .cu kernels; CUDA_ROOT/include is baked into the binary for
#     the kernels dfdx compiles with NVRTC at run time.
#
#   headers, libnvrtc, libcublas(Lt), libcudart  CUDA 12 wheels (nvidia-*-cu12), the
#                                                 API cudarc 0.9 was written against
#   nvcc (+ cicc, crt headers, CCCL)             CUDA 13 wheels (nvidia-cuda-nvcc & co):
#                                                 no cu12 wheel ships nvcc itself, only
#                                                 ptxas. Its PTX is ISA 9.0, so running
#                                                 the binary needs an NVIDIA driver for
#                                                 CUDA 13 (>= 580).
#   libcuda.so                                    a link-time stub generated here from
#                                                 cuda.h's function names (soname
#                                                 libcuda.so.1: at run time the driver's
#                                                 real library is used)
#   nvidia-smi                                    a stand-in printing $CUDA_COMPUTE_CAP
#                                                 (default 80), only when no real
#                                                 nvidia-smi is on PATH
#
# Knobs (environment): CUDA_VENV (default /tmp/cudavenv), CUDA_ROOT_DIR (default
# /tmp/ablate-cuda), PYTHON (default python3), CUDA12 (default 12.9), CUDA13 (default 13.0).
# Both directories must lie outside the repository.
set -euo pipefail

VENV=${CUDA_VENV:-/tmp/cudavenv}
ROOT=${CUDA_ROOT_DIR:-/tmp/ablate-cuda}
PY=${PYTHON:-python3}
CU12=${CUDA12:-12.9}
CU13=${CUDA13:-13.0}

log() { printf '[cuda-toolkit] %s\n' "$*" >&2; }

# 1. The wheels, in a virtualenv outside the repository.
if [ ! -x "$VENV/bin/pip" ]; then
    log "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
fi
log "installing the CUDA $CU12 libraries and the CUDA $CU13 compiler into $VENV (skipped when present)"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    "nvidia-cuda-runtime-cu12==$CU12.*" \
    "nvidia-cuda-nvrtc-cu12==$CU12.*" \
    "nvidia-cublas-cu12==$CU12.*" \
    "nvidia-cuda-cccl-cu12==$CU12.*" \
    "nvidia-cuda-nvcc==$CU13.*" \
    "nvidia-nvvm==$CU13.*" \
    "nvidia-cuda-crt==$CU13.*" \
    "nvidia-cuda-runtime==$CU13.*" \
    "nvidia-cuda-cccl==$CU13.*"

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
NV=$SITE/nvidia
for d in cuda_runtime cuda_nvrtc cublas cuda_cccl cu13/bin cu13/nvvm/bin; do
    [ -d "$NV/$d" ] || { log "missing $NV/$d after pip install"; exit 1; }
done
[ -x "$NV/cu13/bin/nvcc" ] || { log "no nvcc in $NV/cu13/bin"; exit 1; }

# 2. CUDA_ROOT: include/, lib64/, lib64/stubs/, bin/, all links into the wheels.
mkdir -p "$ROOT/include" "$ROOT/lib64/stubs" "$ROOT/bin"

# Headers of the CUDA 12 wheels, merged (cuda.h, cuda_runtime.h, cuda_fp16.h, nvrtc.h,
# cublas*.h, CCCL's nv/ cuda/ cub/ thrust/).
for inc in cuda_runtime cuda_nvrtc cublas cuda_cccl; do
    for f in "$NV/$inc/include"/*; do
        [ -e "$f" ] || continue
        case "$(basename "$f")" in __init__.py | __pycache__) continue ;; esac
        ln -sfn "$f" "$ROOT/include/$(basename "$f")"
    done
done
[ -f "$ROOT/include/cuda.h" ] || { log "no cuda.h assembled"; exit 1; }

# Shared libraries: the versioned names the wheels ship, plus the unversioned
# development names the linker looks for.
for f in "$NV"/cuda_runtime/lib/libcudart.so.* "$NV"/cuda_nvrtc/lib/libnvrtc*.so* \
    "$NV"/cublas/lib/libcublas.so.* "$NV"/cublas/lib/libcublasLt.so.*; do
    [ -e "$f" ] || continue
    ln -sfn "$f" "$ROOT/lib64/$(basename "$f")"
done
for lib in cudart nvrtc cublas cublasLt; do
    real=$(ls "$ROOT/lib64/lib$lib.so."[0-9]* 2>/dev/null | head -n1 || true)
    [ -n "$real" ] || { log "no lib$lib.so.* in the wheels"; exit 1; }
    ln -sfn "$(basename "$real")" "$ROOT/lib64/lib$lib.so"
done

# libcuda.so belongs to the driver, which no wheel ships: a stub with every cu* name
# that cuda.h mentions (including the _v2/_ptds/_ptsz names its macros map to, and
# cudarc's own binding list when the cargo registry has it), like the toolkit's own
# stubs/libcuda.so. Only the linker ever sees it.
stub=$ROOT/lib64/stubs/libcuda.so
if [ ! -f "$stub" ] || [ "$ROOT/include/cuda.h" -nt "$stub" ]; then
    log "generating the link stub $stub"
    tmp=$(mktemp -d)
    {
        grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$ROOT/include/cuda.h"
        for sys in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys*.rs; do
            [ -f "$sys" ] && grep -ohE 'pub fn cu[A-Z][A-Za-z0-9_]*' "$sys" | sed 's/^pub fn //'
        done
    } | sort -u | sed 's/.*/void &(void) {}/' >"$tmp/libcuda_stub.c"
    cc -shared -fPIC -o "$tmp/libcuda.so" -Wl,-soname,libcuda.so.1 "$tmp/libcuda_stub.c"
    mv "$tmp/libcuda.so" "$stub"
    rm -rf "$tmp"
fi

# nvcc: a wrapper, so nvcc finds its own CUDA 13 tree (cicc, crt, CCCL) next to its
# real path rather than the CUDA 12 headers above.
cat >"$ROOT/bin/nvcc" <<EOF
#!/bin/sh
exec "$NV/cu13/bin/nvcc" "\$@"
EOF
chmod +x "$ROOT/bin/nvcc"

# dfdx's build script reads the GPU's compute capability from nvidia-smi. Without a GPU,
# a stand-in answers with \$CUDA_COMPUTE_CAP (default 80: PTX for sm_80 also runs on
# newer GPUs). Where a real nvidia-smi exists, it is left alone.
real_smi=$(PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$ROOT/bin" | paste -sd: -) command -v nvidia-smi || true)
if [ -z "$real_smi" ]; then
    cat >"$ROOT/bin/nvidia-smi" <<'EOF'
#!/bin/sh
# Stand-in for a machine without a GPU, for dfdx's build script only.
echo compute_cap
echo "${CUDA_COMPUTE_CAP:-80}"
EOF
    chmod +x "$ROOT/bin/nvidia-smi"
else
    rm -f "$ROOT/bin/nvidia-smi"
fi

cat >"$ROOT/env.sh" <<EOF
export CUDA_ROOT=$ROOT
export PATH=$ROOT/bin:\$PATH
export LD_LIBRARY_PATH=$ROOT/lib64\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
EOF

log "nvcc: $("$ROOT/bin/nvcc" --version | tail -n1)"
log "ready; export these (or: . $ROOT/env.sh), then: cargo build --features cuda"
cat "$ROOT/env.sh"
