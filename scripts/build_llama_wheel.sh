#!/usr/bin/env bash
# Builds llama-cpp-python (the version services/generator/pyproject.toml pins) into a wheel that
# runs on any x86-64 CPU with AVX2 (x86-64-v3: Intel since 2013, AMD since 2015), once, and
# prints the wheel's path. `make` and the generator's Dockerfile both install through it.
#
# Why not pip's own build: llama.cpp compiles for the build machine's CPU by default
# (GGML_NATIVE). A wheel built on a CPU with AVX-512/AMX and then run on another (CI, a
# container moved to other hosts, a machine whose hypervisor hides those units) dies with
# "Illegal instruction" at the first decode, which is what happened here. pip caches the wheel
# it built without regard to CMAKE_ARGS, so the flags must go with a cache of our own: the
# cache folder's name carries a digest of every option below, so changing one rebuilds.
#
# Only what the generator loads is compiled: libllama and libggml (ggml-base, ggml-cpu). Left
# out, 104 of the 178 compile units of a default build:
#   - libmtmd (LLAVA_BUILD=OFF): the multimodal library, loaded only by llama-cpp-python's
#     image chat handlers; Parlance refuses image parts with a 400.
#   - llama.cpp's "common" library (with its HTTP client and JSON-heavy chat parsers): used by
#     llama.cpp's own tools and by libmtmd, never by the Python package. llama-cpp-python's
#     CMakeLists forces LLAMA_BUILD_COMMON=ON, so a -D cannot turn it off; a file that CMake
#     includes at the end of llama.cpp's own project() call (CMAKE_PROJECT_llama.cpp_INCLUDE)
#     runs after that and sets it OFF before llama.cpp reads it.
#   - tools, examples, the server, tests, the unified app: already OFF when llama.cpp is a
#     subproject; set OFF here too so that an upstream change of default cannot add them back.
# The units left compile in parallel (one job per CPU) and each one is printed as it starts,
# so the minutes of a first build show progress rather than silence (4.6 CPU-minutes: ~3 min
# on 2 idle cores; it was 9.4 CPU-minutes before this list). The full log is kept beside
# the wheel (build.log).
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
    cpu_flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    variant=x86-64-v3 ;;
  *)
    # Other architectures: the compiler's baseline for the target (portable, slower).
    cpu_flags="-DGGML_NATIVE=OFF"
    variant="$(uname -m)-baseline" ;;
esac
flags="$cpu_flags -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF"
flags="$flags -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF"
flags="$flags -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF"
project_include='set(LLAMA_BUILD_COMMON OFF CACHE BOOL "not loaded by llama-cpp-python" FORCE)'

key=$(printf '%s\n' "$version" "$variant" "$flags" "$project_include" | sha256sum | cut -c1-12)
out="$wheel_dir/llama-cpp-python-$version-$variant-$key"
wheel=$(ls "$out"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  jobs=$(nproc 2>/dev/null || echo 2)
  echo "[parlance] compiling llama.cpp $version ($variant, $jobs jobs; ~3 min on 2 idle cores, once)" >&2
  mkdir -p "$out"
  include_dir=$(mktemp -d)
  trap 'rm -rf "$include_dir"' EXIT
  echo "$project_include" > "$include_dir/llama-project.cmake"
  # cmake.verbose=false: the sdist turns it on, which prints every compiler command line;
  # ninja's own one line per unit is the progress shown.
  if ! CMAKE_ARGS="$flags -DCMAKE_PROJECT_llama.cpp_INCLUDE=$include_dir/llama-project.cmake" \
      CMAKE_BUILD_PARALLEL_LEVEL=$jobs \
      "$python" -m pip wheel -v --no-cache-dir --no-deps -w "$out" \
        --config-settings=cmake.verbose=false "llama-cpp-python==$version" 2>&1 \
      | tee "$out/build.log" \
      | awk '/\[[0-9]+\/[0-9]+\] /{ match($0, /\[[0-9]+\/[0-9]+\]/); n = substr($0, RSTART, RLENGTH);
                                      f = $NF; sub(/.*\//, "", f);
                                      printf "[parlance] llama.cpp %s %s\n", n, f; fflush() }' >&2
  then
    echo "[parlance] the llama.cpp build failed; the end of $out/build.log:" >&2
    tail -n 40 "$out/build.log" >&2
    exit 1
  fi
  wheel=$(ls "$out"/llama_cpp_python-"$version"-*.whl | head -n 1)
fi
echo "$wheel"
