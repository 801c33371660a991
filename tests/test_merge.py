"""``tooltune export``: a tiny base + a tiny adapter trained here with peft, merged into ≥ 2 shards and verified."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import make_tiny_llama
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from typer.testing import CliRunner

from tooltune.chat_template import load_from_tokenizer_dir, render
from tooltune.cli import app
from tooltune.merge import MergeError, export_merged
from tooltune.templates import get_template

QWEN_TEMPLATE = (Path(__file__).parent / "fixtures" / "tokenizers" / "qwen2.5" / "chat_template.jinja").read_text()
EXPORT_SIZE_GB = 0.005  # 5 MB: the tiny llama's 12.6 MB embedding alone forces a second shard


def train_tiny_adapter(base: Path, out: Path, steps: int = 8, chat_template: str | None = None) -> Path:
    """A real LoRA fine-tune of a few steps (q_proj, v_proj like the seed), saved as PEFT safetensors."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    text = (
        '<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n'
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
    )
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # it did learn something, so lora_B is far from zero
    model.save_pretrained(out)
    if chat_template is not None:  # what the training stage saves next to the adapter
        tokenizer.chat_template = chat_template
        tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("merge_base") / "base")


@pytest.fixture(scope="module")
def tiny_adapter(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("merge_adapter") / "adapter"
    return train_tiny_adapter(tiny_base, out, chat_template=QWEN_TEMPLATE)


@pytest.fixture(scope="module")
def merged(tiny_base: Path, tiny_adapter: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("merged") / "merged"
    return export_merged(tiny_base, tiny_adapter, out, export_size=EXPORT_SIZE_GB, template="qwen")


def test_merge_writes_index_and_at_least_two_shards(merged) -> None:
    out = merged.export_dir
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shard_names = sorted(set(index["weight_map"].values()))
    assert len(shard_names) >= 2
    assert [p.name for p in merged.shards] == shard_names
    for shard in merged.shards:
        tensors = load_file(str(shard))
        too_big = shard.stat().st_size > EXPORT_SIZE_GB * 1e9
        # A shard may exceed the limit only when it holds one tensor that is itself larger.
        assert not too_big or len(tensors) == 1
    assert not list(out.glob("*.bin"))
    assert not any("lora" in key for key in index["weight_map"])


def test_merged_logits_equal_base_plus_adapter(merged, tiny_base: Path, tiny_adapter: Path) -> None:
    from peft import PeftModel

    assert merged.verified_samples == 3
    assert merged.max_abs_diff is not None and merged.max_abs_diff <= merged.tolerance
    # Independent check: the shards load with plain transformers and match peft's unmerged forward.
    reloaded = AutoModelForCausalLM.from_pretrained(merged.export_dir, use_safetensors=True)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), tiny_adapter)
    plain_base = AutoModelForCausalLM.from_pretrained(tiny_base)
    ids = torch.tensor([[1, 50, 300, 2000, 7, 9, 11]])
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
        want = reference(input_ids=ids).logits
        without_adapter = plain_base(input_ids=ids).logits
    assert (got - want).abs().max().item() < 1e-4
    assert (got - without_adapter).abs().max().item() > 1e-3  # the adapter really changed the model


def test_eos_stops_at_end_of_turn_and_template_comes_from_adapter(merged) -> None:
    out = merged.export_dir
    tokenizer = AutoTokenizer.from_pretrained(out)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    generation = GenerationConfig.from_pretrained(out)
    eos = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    assert merged.end_of_turn_token == "<|im_end|>"
    assert eos[0] == im_end
    assert tokenizer.eos_token == "<|im_end|>"
    assert merged.chat_template_source == "adapter"
    assert any("differs from template 'qwen'" in w for w in merged.warnings)
    assert load_from_tokenizer_dir(out) == QWEN_TEMPLATE
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32"


def test_generate_stops_at_end_of_turn(merged) -> None:
    """With the written generation_config, generate() stops at <|im_end|> once the model emits it."""
    model = AutoModelForCausalLM.from_pretrained(merged.export_dir)
    tokenizer = AutoTokenizer.from_pretrained(merged.export_dir)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():  # force the model to prefer <|im_end|> at every step
        model.lm_head.weight.zero_()
        model.lm_head.weight[im_end] = model.model.embed_tokens.weight[im_end] * 0 + 1.0
    prompt = render(QWEN_TEMPLATE, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert new == [im_end]


def test_template_name_used_when_adapter_has_no_tokenizer(tiny_base: Path, tmp_path: Path) -> None:
    adapter = train_tiny_adapter(tiny_base, tmp_path / "adapter", steps=2)
    result = export_merged(tiny_base, adapter, tmp_path / "out", export_size=1, template="qwen", export_dtype="bf16")
    assert result.chat_template_source == "template:qwen"
    qwen_layout = get_template("qwen", AutoTokenizer.from_pretrained(tiny_base)).jinja_chat_template
    assert load_from_tokenizer_dir(tmp_path / "out") == qwen_layout
    assert len(result.shards) == 1 and result.dtype == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.dtype == torch.bfloat16
    assert result.max_abs_diff <= result.tolerance


def test_legacy_format_writes_bin_with_warning(tiny_base: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    result = export_merged(tiny_base, tiny_adapter, tmp_path / "legacy", export_size=EXPORT_SIZE_GB, legacy_format=True)
    out = tmp_path / "legacy"
    assert (out / "pytorch_model.bin.index.json").is_file()
    assert len(list(out.glob("pytorch_model-*.bin"))) >= 2
    assert not list(out.glob("*.safetensors"))
    assert any("pickle" in w for w in result.warnings)
    assert result.max_abs_diff <= result.tolerance  # verified by loading the .bin shards back


def test_refuses_quantized_base(tiny_base: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    quantized = tmp_path / "quantized"
    shutil.copytree(tiny_base, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match="quantized \\(bitsandbytes\\)"):
        export_merged(quantized, tiny_adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_gguf_base(default_gguf: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="GGUF"):
        export_merged(default_gguf, tiny_adapter, tmp_path / "out")


def test_refuses_adapter_of_another_shape(tiny_adapter: Path, tmp_path: Path) -> None:
    wider = make_tiny_llama(tmp_path / "wider", hidden_size=96, num_attention_heads=6, num_key_value_heads=2)
    with pytest.raises(MergeError, match="adapter was trained on .*hidden_size=64.* has hidden_size=96"):
        export_merged(wider, tiny_adapter, tmp_path / "out")
    # Trained on another machine: the recorded base path does not exist here, so the tensor shapes must tell.
    moved = tmp_path / "moved_adapter"
    shutil.copytree(tiny_adapter, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/elsewhere/Qwen2.5-7B-Instruct"
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match="in_features 64 but the base's .*q_proj has 96"):
        export_merged(wider, moved, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_adapter_recorded_for_another_architecture(
    tiny_adapter: Path, tiny_qwen2_dir: Path, tmp_path: Path
) -> None:
    # Same shapes (hidden 64, 2 layers) but a different model: only the adapter's recorded base can tell.
    with pytest.raises(MergeError, match="model_type='llama'"):
        export_merged(tiny_qwen2_dir, tiny_adapter, tmp_path / "out")


def test_refuses_to_overwrite_its_inputs(tiny_base: Path, tiny_adapter: Path) -> None:
    with pytest.raises(MergeError, match="would replace the input"):
        export_merged(tiny_base, tiny_adapter, tiny_adapter)
    assert (tiny_adapter / "adapter_config.json").is_file()


def test_refuses_non_adapter_and_pickle_adapter(tiny_base: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="adapter_config.json: missing"):
        export_merged(tiny_base, tiny_base, tmp_path / "out")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_adapter / "adapter_config.json", pickled)
    torch.save({}, pickled / "adapter_model.bin")
    with pytest.raises(MergeError, match="only a pickle adapter_model.bin"):
        export_merged(tiny_base, pickled, tmp_path / "out")


def test_cli_takes_the_seed_command(tiny_base: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "merge_model_tool_call_qwen"
    argv = [
        "export",
        "--model_name_or_path", str(tiny_base),
        "--adapter_name_or_path", str(tiny_adapter),
        "--template", "qwen",
        "--finetuning_type", "lora",
        "--export_dir", str(out),
        "--export_size", "0.005",
        "--export_legacy_format", "False",
    ]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "max abs logit diff" in result.output
    assert (out / "model.safetensors.index.json").is_file()
    alias_argv = ["merge", *argv[1:-4], "--export-dir", str(tmp_path / "b"), "--verify_samples", "0"]
    alias = CliRunner().invoke(app, alias_argv)
    assert alias.exit_code == 0, alias.output
    assert "not verified" in alias.output


def test_cli_rejects_full_finetuning_type(tiny_base: Path, tmp_path: Path) -> None:
    from tooltune.commands.export import ExportArgs, ExportArgumentError, run_export

    with pytest.raises(ExportArgumentError, match="only LoRA"):
        run_export(ExportArgs(model_name_or_path=str(tiny_base), adapter_name_or_path="x", export_dir=str(tmp_path),
                              finetuning_type="full"))
    with pytest.raises(ExportArgumentError, match="--export_dir"):
        run_export(ExportArgs(model_name_or_path=str(tiny_base), adapter_name_or_path="x"))


def test_named_template_jinja_without_tokenizer() -> None:
    """The pipeline asks for the training layout's Jinja before any tokenizer is loaded."""
    from tooltune.merge import named_template_jinja

    qwen = named_template_jinja("qwen")
    assert qwen is not None and "<tool_call>" in qwen
    assert named_template_jinja("no-such-template") is None
