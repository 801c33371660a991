#!/usr/bin/env bash
# A short bf16 CUDA run of `tooltune train` on a tiny Qwen2 model with gradient checkpointing: the GPU smoke check.
# Usage: bash bench/gpu_smoke.sh OUT_DIR [extra train flags]   (on a machine with a CUDA GPU; CPU works without --bf16)
set -euo pipefail
OUT="${1:-/tmp/tooltune_gpu_smoke}"; shift || true
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
python3 - "$OUT" <<'PY'
import sys
sys.path.insert(0, "tests")
from tiny_models import make_tiny_qwen2
make_tiny_qwen2(sys.argv[1] + "/base", hidden_size=256, intermediate_size=512)
PY
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')"
python3 -m tooltune train --stage sft --do_train --model_name_or_path "$OUT/base" \
    --dataset glaive_toolcall_en_demo --template qwen --finetuning_type lora --lora_target q_proj,v_proj \
    --output_dir "$OUT/adapter" --overwrite_output_dir --per_device_train_batch_size 2 \
    --gradient_accumulation_steps 2 --cutoff_len 1024 --max_samples 64 --num_train_epochs 1 --warmup_steps 2 \
    --learning_rate 1e-3 --logging_steps 2 --save_steps 8 --gradient_checkpointing true "$@"
ls -la "$OUT/adapter"
