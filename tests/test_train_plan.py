"""The plan's arithmetic (the seed's hand calculation) and its warnings; argument parsing of the seed's command."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tooltune.args import parse_into
from tooltune.data import DataArguments
from tooltune.train.args import FinetuningArguments, ModelArguments, TrainArguments, TrainConfigError, validate
from tooltune.train.plan import compute_plan, steps_per_epoch

REPO = Path(__file__).resolve().parent.parent
CLASSES = (ModelArguments, DataArguments, FinetuningArguments, TrainArguments)

# The seed's training command, verbatim after `python src/train.py`.
SEED_ARGV = shlex.split("""--stage sft --do_train --model_name_or_path /root/autodl-tmp/model/Qwen/Qwen2.5-7B-Instruct
--dataset glaive_toolcall_en_demo --template qwen --finetuning_type lora --lora_target q_proj,v_proj
--output_dir /root/autodl-tmp/tool_call_full --overwrite_output_dir --per_device_train_batch_size 2
--gradient_accumulation_steps 8 --cutoff_len 4096 --num_train_epochs 5 --warmup_steps 20 --learning_rate 5e-6
--logging_steps 10 --save_steps 30 --gradient_checkpointing true --bf16""")


def test_seed_numbers_300_samples():
    # 300 samples / batch 2 = 150 batches; 150 / accumulation 8 = 18.75 → 19 optimizer steps per epoch (the last
    # one accumulates 6 batches), × 5 epochs = 95 steps; the seed's 20 warmup steps are 21% of them.
    plan = compute_plan(samples=300, per_device_batch=2, gradient_accumulation=8, epochs=5, warmup_steps=20)
    assert plan.effective_batch == 16
    assert plan.batches_per_epoch == 150
    assert plan.steps_per_epoch == 19
    assert plan.total_steps == 95
    assert plan.warmup_steps == 20
    assert plan.warmup_share == pytest.approx(20 / 95)
    assert plan.warnings == []
    text = "\n".join(plan.lines())
    assert "2 × 8 = 16" in text and "19/epoch × 5 epochs = 95 total" in text and "(21% of total)" in text
    assert "in layers" not in text
    some_layers = compute_plan(samples=300, per_device_batch=2, gradient_accumulation=8, epochs=5,
                               trainable_params=10, total_params=1000, adapted_layers="15-29 of 30")
    assert "10 trainable / 1,000 total (1.000%) in layers 15-29 of 30" in "\n".join(some_layers.lines())


def test_multi_device_and_max_steps():
    plan = compute_plan(samples=300, per_device_batch=2, gradient_accumulation=8, epochs=5, world_size=4)
    assert plan.effective_batch == 64 and plan.batches_per_epoch == 38 and plan.steps_per_epoch == 5
    assert plan.total_steps == 25
    capped = compute_plan(samples=300, per_device_batch=2, gradient_accumulation=8, epochs=5, max_steps=7)
    assert capped.total_steps == 7


def test_warmup_ratio_rounds_up_like_transformers():
    plan = compute_plan(samples=100, per_device_batch=4, gradient_accumulation=1, epochs=1, warmup_ratio=0.1)
    assert plan.total_steps == 25 and plan.warmup_steps == 3  # ceil(2.5)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"samples": 300, "warmup_steps": 60}, "> 50%"),  # 60 of 95
        ({"samples": 300, "warmup_steps": 95}, "never reaches"),
        ({"samples": 3000, "warmup_steps": 1}, "< 1%"),  # 1 of 940
        ({"samples": 10, "warmup_steps": 0}, "fewer samples than one batch"),
    ],
)
def test_warnings_say_why(kwargs, needle):
    plan = compute_plan(per_device_batch=2, gradient_accumulation=8, epochs=5, **kwargs)
    assert any(needle in w for w in plan.warnings), plan.warnings


@pytest.mark.parametrize("samples", [1, 7, 16, 17, 150, 299, 300, 301])
@pytest.mark.parametrize(("batch", "accum", "world"), [(2, 8, 1), (1, 1, 1), (3, 4, 2), (4, 3, 3)])
def test_steps_match_transformers(samples, batch, accum, world):
    """Same count as transformers' Trainer.set_initial_training_values for a sized dataloader."""
    import math

    from torch.utils.data import DataLoader

    per_device = math.ceil(samples / world)  # DistributedSampler pads every shard to the same size
    loader = DataLoader(list(range(per_device)), batch_size=batch)
    expected = max(len(loader) // accum + int(len(loader) % accum > 0), 1)
    assert steps_per_epoch(samples, batch, accum, world)[1] == expected


def test_seed_command_parses_with_llamafactory_meaning():
    model, data, finetune, training = parse_into(CLASSES, SEED_ARGV)
    assert model.model_name_or_path.endswith("Qwen2.5-7B-Instruct")
    assert data.dataset == "glaive_toolcall_en_demo" and data.template == "qwen" and data.cutoff_len == 4096
    assert finetune.stage == "sft" and finetune.finetuning_type == "lora"
    assert finetune.lora_target == ["q_proj", "v_proj"]
    assert training.do_train and training.overwrite_output_dir and training.bf16 and training.gradient_checkpointing
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (2, 8)
    assert (training.num_train_epochs, training.warmup_steps, training.learning_rate) == (5.0, 20, 5e-6)
    assert (training.logging_steps, training.save_steps) == (10, 30)


def test_yaml_config_equals_seed_command():
    from_yaml = parse_into(CLASSES, [str(REPO / "configs" / "examples" / "train_seed.yaml")])
    from_argv = parse_into(CLASSES, SEED_ARGV)
    assert from_yaml[1:] == from_argv[1:]
    assert from_yaml[0].model_name_or_path is None  # the example runs on the embedded default model


def test_next_keys_users_reach_for():
    argv = shlex.split(
        "--lora_rank 16 --lora_alpha 32 --lora_dropout 0.05 --lora_target all --warmup_ratio 0.1 "
        "--lr_scheduler_type cosine --weight_decay 0.01 --max_grad_norm 0.5 --max_samples 100 --val_size 0.1 "
        "--seed 7 --resume_from_checkpoint last --report_to none --group_by_length true --fp16 --lora-layers -4"
    )
    model, data, finetune, training = parse_into(CLASSES, argv)
    assert (finetune.lora_rank, finetune.lora_alpha, finetune.lora_dropout) == (16, 32, 0.05)
    assert finetune.lora_target == ["all"] and finetune.lora_layers == -4
    assert (training.warmup_ratio, training.lr_scheduler_type, training.weight_decay) == (0.1, "cosine", 0.01)
    assert (data.max_samples, data.val_size, data.seed, training.seed) == (100, 0.1, 7, 7)
    assert training.resume_from_checkpoint == "last" and training.fp16 and training.group_by_length


def test_bad_values_are_rejected_with_reason():
    with pytest.raises(TrainConfigError, match="exclusive"):
        validate(FinetuningArguments(), TrainArguments(bf16=True, fp16=True))
    with pytest.raises(TrainConfigError, match="report_to"):
        validate(FinetuningArguments(), TrainArguments(report_to="wandb"))
    with pytest.raises(Exception, match="stage"):
        parse_into(CLASSES, ["--stage", "dpo"])


def test_shipped_launch_configs_are_valid():
    import json

    import yaml

    configs = REPO / "configs"
    accelerate = {p.stem: yaml.safe_load(p.read_text()) for p in (configs / "accelerate").glob("*.yaml")}
    assert {"ddp", "fsdp2", "multi_node"} <= set(accelerate)
    assert accelerate["fsdp2"]["distributed_type"] == "FSDP" and accelerate["fsdp2"]["fsdp_config"]["fsdp_version"] == 2
    assert accelerate["ddp"]["distributed_type"] == "MULTI_GPU" and accelerate["multi_node"]["num_machines"] == 2
    z2 = json.loads((configs / "deepspeed" / "ds_z2.json").read_text())
    z3 = json.loads((configs / "deepspeed" / "ds_z3.json").read_text())
    assert z2["zero_optimization"]["stage"] == 2 and z3["zero_optimization"]["stage"] == 3
    # ZeRO-3 shards the weights; gathering them in 16 bit on save is what lets the adapter be merged afterwards.
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
