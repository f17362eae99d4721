#!/usr/bin/env bash
# Builds llama-cpp-python (the version services/generator/pyproject.toml pins) into a wheel that
# runs on any x86-64 CPU with AVX2 (x86-64-v3: Intel since 2013, AMD since 2015), once, and
# prints the wheel's path. `make` and the generator's Dockerfile both install through it.
#
# Why not pip's own build: llama.cpp compiles for the build machine's CPU by default
# (GGML_NATIVE). A wheel built on a CPU with AVX-512/AMX and then run on another (CI, a
# container moved to other hosts, a machine whose hypervisor hides those units) dies with
# "Illegal instruction" at the first decode, which is what happened here. pip caches the wheel
# it built without regard to CMAKE_ARGS, so the flags must go with a cache of our own.
#
#   scripts/build_llama_wheel.sh PYTHON WHEEL_DIR
set -euo pipefail
python=${1:?usage: build_llama_wheel.sh PYTHON WHEEL_DIR}
wheel_dir=${2:?usage: build_llama_wheel.sh PYTHON WHEEL_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)

version=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$root/services/generator/pyproject.toml")
[ -n "$version" ] || { echo "no llama-cpp-python pin in services/generator/pyproject.toml" >&2; exit 1; }

case "$(uname -m)" in
  x86_64)
    flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    variant=x86-64-v3 ;;
  *)
    # Other architectures: the compiler's baseline for the target (portable, slower).
    flags="-DGGML_NATIVE=OFF"
    variant="$(uname -m)-baseline" ;;
esac

out="$wheel_dir/llama-cpp-python-$version-$variant"
wheel=$(ls "$out"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "[parlance] compiling llama.cpp ($variant; ~6-8 min on 2 cores, once)" >&2
  mkdir -p "$out"
  CMAKE_ARGS="$flags" "$python" -m pip wheel --no-cache-dir --no-deps -w "$out" \
    "llama-cpp-python==$version" >&2
  wheel=$(ls "$out"/llama_cpp_python-"$version"-*.whl | head -n 1)
fi
echo "$wheel"
