"""The seed's training command, scaled down to a tiny model and a few samples: it trains, logs, checkpoints
atomically, plots, and writes a PEFT adapter that ``peft`` loads and that changes the model's output."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_support import run_cli, seed_argv, write_mini_dataset

from tooltune.args import parse_into
from tooltune.data import DataArguments
from tooltune.train import train
from tooltune.train.args import FinetuningArguments, ModelArguments, TrainArguments
from tooltune.train.callbacks import read_log
from tooltune.train.checkpoints import STAGING_DIR, checkpoints, latest_checkpoint

CLASSES = (ModelArguments, DataArguments, FinetuningArguments, TrainArguments)


@pytest.fixture(autouse=True)
def one_thread():
    # Two OpenMP threads spin against each other on a shared 2-core runner; tiny models run fastest on one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def seed_run(tiny_llama_dir, tmp_path_factory):
    """One training run shared by the assertions below (training is the slow part)."""
    root = tmp_path_factory.mktemp("seed_run")
    data_dir = write_mini_dataset(root / "data")
    out = root / "out"
    argv = seed_argv(tiny_llama_dir, data_dir, out, val_size=2)
    torch.set_num_threads(1)
    result = train(*parse_into(CLASSES, argv))
    return result, out, tiny_llama_dir


def test_plan_matches_the_run(seed_run):
    result, out, _ = seed_run
    plan = result.plan
    # 12 records − 2 held out = 10 samples; batch 2 → 5 batches; accumulation 2 → 3 steps/epoch; 2 epochs → 6.
    assert (plan.samples, plan.eval_samples, plan.effective_batch) == (10, 2, 4)
    assert (plan.steps_per_epoch, plan.total_steps, plan.warmup_steps) == (3, 6, 1)
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == plan.total_steps == state["max_steps"]
    assert 0 < plan.trained_tokens < plan.tokens
    # 2 layers × r 8 × (in + out): q_proj 64→64, v_proj 64→32 (2 KV heads of 16)
    assert plan.trainable_params == 2 * 8 * (64 + 64) + 2 * 8 * (64 + 32)


def test_logs_every_step_with_throughput(seed_run):
    result, out, _ = seed_run
    records = read_log(out / "trainer_log.jsonl")
    train_steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_steps] == [1, 2, 3, 4, 5, 6]
    for r in train_steps:
        assert {"loss", "learning_rate", "grad_norm", "tokens", "trained_tokens"} <= set(r)
    assert train_steps[-1]["tokens"] == 2 * result.plan.tokens  # two epochs, no padding counted
    assert train_steps[-1]["trained_tokens"] == 2 * result.plan.trained_tokens
    assert any("eval_loss" in r for r in records)
    assert "eval_loss" in result.metrics
    assert train_steps[-1]["loss"] < train_steps[0]["loss"]  # lr 1e-2 on a tiny model: it learns


def test_checkpoints_and_final_outputs(seed_run):
    _, out, _ = seed_run
    assert [p.name for p in checkpoints(out)] == ["checkpoint-3", "checkpoint-6"]
    assert latest_checkpoint(out).name == "checkpoint-6"
    assert not list(out.glob(f"{STAGING_DIR}*"))  # staging folders are gone after each rename
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "training_loss.png",
        "train_results.json",
    ):
        assert (out / name).is_file(), name
    assert (out / "training_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert (config["r"], config["lora_alpha"]) == (8, 16)


def test_tokenizer_carries_the_training_layout(seed_run, tiny_llama_dir):
    from transformers import AutoTokenizer

    from tooltune.templates import get_template

    _, out, _ = seed_run
    saved = AutoTokenizer.from_pretrained(out)
    expected = get_template("qwen", AutoTokenizer.from_pretrained(tiny_llama_dir)).jinja_chat_template
    assert saved.chat_template == expected  # serving renders exactly what training saw


def test_adapter_loads_in_peft_and_changes_output(seed_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, out, model_dir = seed_run
    ids = torch.tensor([[1, 200, 300, 400, 500]])
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
    with torch.no_grad():
        before = base(input_ids=ids).logits
    tuned = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        after = tuned(input_ids=ids).logits
    assert (after - before).abs().max() > 1e-3


def test_half_written_checkpoint_is_never_the_latest(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    staged = tmp_path / STAGING_DIR / "checkpoint-9"
    staged.mkdir(parents=True)
    (staged / "adapter_model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"


def test_bf16_on_cpu_fails_before_any_work(tmp_path, tiny_llama_dir):
    from tooltune.train.device import bf16_supported

    if bf16_supported():
        pytest.skip("this machine supports bf16")
    data_dir = write_mini_dataset(tmp_path / "data")
    proc = run_cli([*seed_argv(tiny_llama_dir, data_dir, tmp_path / "out"), "--bf16"])
    assert proc.returncode == 1, proc.stderr
    assert "--bf16" in proc.stderr and "fp32" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_do_train_false_prints_plan_only(tmp_path, tiny_llama_dir):
    data_dir = write_mini_dataset(tmp_path / "data")
    argv = seed_argv(tiny_llama_dir, data_dir, tmp_path / "out", do_train="false", num_train_epochs=5, warmup_steps=20)
    result = train(*parse_into(CLASSES, argv))
    assert result.adapter_dir is None and result.plan.total_steps == 15
    assert any("never reaches" in w for w in result.plan.warnings)  # 20 warmup steps > 15 total


def test_loraplus_and_neftune(tmp_path, tiny_llama_dir):
    """LLaMA-Factory's loraplus_lr_ratio (B matrices at ratio × lr) and neftune_noise_alpha (noisy input embeddings
    while training, clean at inference) reach the optimizer and the Trainer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments

    from tooltune.train.trainer import ToolTuneTrainer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    args = TrainingArguments(output_dir=str(tmp_path / "o"), learning_rate=1e-3, report_to=[], use_cpu=True,
                             neftune_noise_alpha=5.0)
    trainer = ToolTuneTrainer(model=model, args=args, loraplus_lr_ratio=16.0)
    groups = trainer.create_optimizer().param_groups
    by_lr = {g["lr"]: g["params"] for g in groups}
    names = {id(p): n for n, p in model.named_parameters()}
    assert set(by_lr) == {1e-3, 16e-3}
    assert all("lora_B" in names[id(p)] for p in by_lr[16e-3]) and all("lora_A" in names[id(p)] for p in by_lr[1e-3])
    assert sum(len(ps) for ps in by_lr.values()) == sum(p.requires_grad for p in model.parameters())
    # NEFTune is the Trainer's own (transformers hooks the input embeddings while training): the flag must reach it
    from tooltune.train.device import resolve_precision
    from tooltune.train.plan import compute_plan
    from tooltune.train.run import build_hf_arguments

    _, _, finetune, training = parse_into(CLASSES, seed_argv(tiny_llama_dir, tmp_path, tmp_path / "x",
                                                            neftune_noise_alpha=5, loraplus_lr_ratio=16))
    assert finetune.loraplus_lr_ratio == 16
    plan = compute_plan(samples=4, per_device_batch=1, gradient_accumulation=1, world_size=1, epochs=1, max_steps=-1,
                        warmup_steps=0, warmup_ratio=0.0, tokens=10, trained_tokens=5)
    assert build_hf_arguments(training, plan, resolve_precision(training), has_eval=False).neftune_noise_alpha == 5
    # and both run end to end from the seed's command line
    data_dir = write_mini_dataset(tmp_path / "data")
    out = tmp_path / "out"
    result = train(*parse_into(CLASSES, seed_argv(tiny_llama_dir, data_dir, out, max_steps=2, num_train_epochs=1,
                                                  loraplus_lr_ratio=16, neftune_noise_alpha=5,
                                                  gradient_checkpointing="false")))
    assert result.plan.total_steps == 2 and (out / "adapter_model.safetensors").is_file()
    with pytest.raises(Exception, match="--loraplus_lr_ratio must be > 0"):
        train(*parse_into(CLASSES, seed_argv(tiny_llama_dir, data_dir, tmp_path / "bad", loraplus_lr_ratio=0)))


def test_decision_weight_trains_from_the_seed_command(tmp_path, tiny_llama_dir):
    """--decision_weight through the whole training path: the first step's loss counts the token after each
    </tool_call> several times, so it is above the plain loss of the same batch, and an adapter is written."""
    data_dir = write_mini_dataset(tmp_path / "data")

    def first_loss(out, **flags):
        train(*parse_into(CLASSES, seed_argv(tiny_llama_dir, data_dir, out, max_steps=1, num_train_epochs=1,
                                              **flags)))
        assert (out / "adapter_model.safetensors").is_file()
        return [r["loss"] for r in read_log(out / "trainer_log.jsonl") if "loss" in r][0]

    assert first_loss(tmp_path / "weighted", decision_weight=8) > first_loss(tmp_path / "plain")


def test_cache_prompt_trains_from_the_seed_command(tmp_path, tiny_llama_dir):
    """--cache_prompt through the whole training path (batches of 2 with right padding, accumulation): the first
    step's loss is the full pass's to float precision, an adapter is written, and the settings it cannot serve
    are refused with the flag to change."""
    data_dir = write_mini_dataset(tmp_path / "data")

    def first_losses(out, **flags):
        train(*parse_into(CLASSES, seed_argv(tiny_llama_dir, data_dir, out, max_steps=2, num_train_epochs=1,
                                              gradient_checkpointing="false", **flags)))
        assert (out / "adapter_model.safetensors").is_file()
        return [r["loss"] for r in read_log(out / "trainer_log.jsonl") if "loss" in r]

    full = first_losses(tmp_path / "full")
    cached = first_losses(tmp_path / "cached", cache_prompt="true")
    assert len(cached) == 2 and cached[0] == pytest.approx(full[0], rel=1e-4)
    with pytest.raises(Exception, match="--cache_prompt needs gradient checkpointing off"):
        train(*parse_into(CLASSES, seed_argv(tiny_llama_dir, data_dir, tmp_path / "ckpt", cache_prompt="true")))
    with pytest.raises(Exception, match="--cache_prompt and --packing exclude each other"):
        train(*parse_into(CLASSES, seed_argv(tiny_llama_dir, data_dir, tmp_path / "packed", cache_prompt="true",
                                              packing="true", gradient_checkpointing="false")))


def test_share_prefix_trains_from_the_seed_command(tmp_path, tiny_llama_dir):
    """--share_prefix through the whole training path (the seed's command, gradient checkpointing on): the twelve
    records offer the same tools, so they train in fewer rows, and one step over all of them has the loss of one
    step over the same samples unshared — the same sum over the same trained tokens. What it cannot serve is
    refused with the flag to change."""
    data_dir = write_mini_dataset(tmp_path / "data")

    def first_step(out, **flags):
        result = train(*parse_into(CLASSES, seed_argv(tiny_llama_dir, data_dir, out, max_steps=1, num_train_epochs=1,
                                                      per_device_train_batch_size=16, gradient_accumulation_steps=1,
                                                      **flags)))
        assert (out / "adapter_model.safetensors").is_file()
        losses = [r["loss"] for r in read_log(out / "trainer_log.jsonl") if "loss" in r]
        return result.plan, losses[0]

    plain_plan, plain = first_step(tmp_path / "plain")
    shared_plan, shared = first_step(tmp_path / "shared", share_prefix="true")
    _, unchecked = first_step(tmp_path / "unchecked", share_prefix="true", gradient_checkpointing="false")
    assert plain_plan.samples == 12 and shared_plan.samples < 12 and shared_plan.packed_samples == 12
    assert plain_plan.samples_label() == "12 samples"
    assert shared_plan.samples_label() == f"{shared_plan.samples} rows (12 samples)"
    assert shared_plan.lines()[0].startswith(f"samples        {shared_plan.samples} rows (12 samples) train")
    assert shared_plan.tokens < plain_plan.tokens and shared_plan.trained_tokens == plain_plan.trained_tokens
    assert shared == pytest.approx(plain, rel=1e-4) and unchecked == pytest.approx(plain, rel=1e-4)
    for flags, message in (({"cache_prompt": "true", "gradient_checkpointing": "false"},
                            "--cache_prompt and --share_prefix exclude each other"),
                           ({"flash_attn": "fa2"}, "--share_prefix needs a per-sample attention mask"),
                           ({"packing": "true"}, "--packing and --share_prefix exclude each other")):
        with pytest.raises(Exception, match=message):
            train(*parse_into(CLASSES, seed_argv(tiny_llama_dir, data_dir, tmp_path / "refused", share_prefix="true",
                                                  **flags)))


def test_lora_layers_trains_from_the_seed_command(tmp_path, tiny_llama_dir):
    """--lora_layers through the whole training path (the seed's command, gradient checkpointing on): the plan names
    the layers, and the adapter written holds those layers' weights only and says so in adapter_config.json."""
    from safetensors import safe_open

    data_dir = write_mini_dataset(tmp_path / "data")
    out = tmp_path / "out"
    result = train(*parse_into(CLASSES, seed_argv(tiny_llama_dir, data_dir, out, max_steps=2, num_train_epochs=1,
                                                  lora_layers=1)))
    assert result.plan.adapted_layers == "1 of 2"
    assert json.loads((out / "adapter_config.json").read_text())["layers_to_transform"] == [1]
    with safe_open(out / "adapter_model.safetensors", "pt") as weights:
        names = list(weights.keys())  # a safetensors handle is not iterable
    assert names and all(".layers.1." in name for name in names)
    # Training on from that adapter: the plan reads the layers from the adapter's own config.
    resumed = train(*parse_into(CLASSES, seed_argv(tiny_llama_dir, data_dir, tmp_path / "more", max_steps=1,
                                                   num_train_epochs=1, adapter_name_or_path=str(out))))
    assert resumed.plan.adapted_layers == "1 of 2"
