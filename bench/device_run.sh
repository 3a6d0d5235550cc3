#!/usr/bin/env bash
# bench/gpu_check.py on a GPU machine that cannot reach the package registries,
# from the kit `python bench/device_kit.py build` gathered in .kit/ (see that
# file). Run in the repository root there; arguments go to gpu_check.py:
#
#   bash bench/device_run.sh [--frames 300] 2>&1 | tee "$OUT/gpu-check.log"
#
# Uses the machine's own python3 (its CUDA PyTorch), adds the kit's wheels in
# .kit/site, converts the default models into .kit/models and points
# ../shared/data at the kit's data, where the bench scripts look for it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
test -d .kit/wheels || { echo "device_run: no .kit/ here: build it with bench/device_kit.py and carry it" >&2; exit 2; }
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .kit/site .kit/wheels/*.whl
export PYTHONPATH="$PWD/.kit/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export ANONYMIZE_MODELS_DIR="$PWD/.kit/models" PYTHONUNBUFFERED=1
if [ ! -e ../shared/data ]; then
    mkdir -p ../shared
    ln -s "$PWD/.kit/data" ../shared/data
fi
"$PY" - <<'EOF'
import platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"python {platform.python_version()}, torch {torch.__version__}, {gpu}", flush=True)
EOF
"$PY" bench/device_kit.py convert
exec "$PY" bench/gpu_check.py "$@"
