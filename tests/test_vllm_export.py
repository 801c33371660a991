"""`tooltune vllm-export`: real llm-compressor runs (in its isolated environment) on a tiny random Qwen2 model.

The first run builds the llm-compressor environment under the tooltune cache (minutes, once); later runs reuse it.
Hidden sizes are multiples of 128 so W4A16's group size 128 applies as on a real model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from tooltune.cli import app
from tooltune.vllm.export import REPORT_FILE, ExportOptions, VllmExportError, copy_tokenizer_files, vllm_export

TINY_QUANTIZABLE = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "num_hidden_layers": 1}


@pytest.fixture(scope="module")
def qwen256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_tiny_qwen2

    return make_tiny_qwen2(tmp_path_factory.mktemp("qwen256") / "merged", **TINY_QUANTIZABLE)


@pytest.fixture(scope="module")
def llmcompressor_env() -> Path:
    from tooltune.vllm.env import ensure_env

    return ensure_env()


def _tensors(directory: Path) -> dict[str, tuple[str, list[int]]]:
    out: dict[str, tuple[str, list[int]]] = {}
    for shard in directory.glob("*.safetensors"):
        with safe_open(shard, "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open handles are not mappings
                tensor = handle.get_slice(key)
                out[key] = (tensor.get_dtype(), list(tensor.get_shape()))
    return out


def _quant_config(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "config.json").read_text())["quantization_config"]


def _assert_travels(source: Path, out: Path) -> None:
    """The tokenizer, its chat template and the generation config are copied byte for byte."""
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes(), name


@pytest.mark.slow
def test_fp8_export_through_the_cli(qwen256: Path, llmcompressor_env: Path, tmp_path: Path) -> None:
    out = tmp_path / "fp8"
    result = CliRunner().invoke(
        app, ["vllm-export", str(qwen256), "--out", str(out), "--verify-samples", "1", "--max-seq-length", "64"]
    )
    assert result.exit_code == 0, result.output
    assert "top-1 agreement" in " ".join(result.output.split())  # the summary line (rich wraps it at 80 columns)

    quant = _quant_config(out)
    assert quant["quant_method"] == "compressed-tensors"
    assert quant["format"] == "float-quantized"
    assert quant["ignore"] == ["lm_head"]
    group = quant["config_groups"]["group_0"]
    assert group["weights"]["num_bits"] == 8 and group["weights"]["type"] == "float"
    assert group["weights"]["strategy"] == "channel"
    assert group["input_activations"]["dynamic"] is True  # FP8 *dynamic*: no calibration data

    tensors = _tensors(out)
    assert tensors["model.layers.0.self_attn.q_proj.weight"] == ("F8_E4M3", [256, 256])
    assert tensors["model.layers.0.self_attn.q_proj.weight_scale"] == ("F32", [256, 1])
    assert tensors["model.layers.0.mlp.down_proj.weight"] == ("F8_E4M3", [256, 512])
    assert tensors["model.layers.0.self_attn.q_proj.bias"][0] == "F32"  # Qwen2's q/k/v biases stay unquantized
    assert tensors["lm_head.weight"][0] == "F32"
    assert tensors["model.embed_tokens.weight"][0] == "F32"
    _assert_travels(qwen256, out)

    report = json.loads((out / REPORT_FILE).read_text())
    check = report["verification"]
    # Reloaded by transformers (compressed-tensors, decompressed), compared position by position with the original.
    assert check["samples"] == 1 and check["positions"] == 64
    assert check["finite"]
    assert 0 < check["mean_kl"] < 0.01
    assert check["generated_ids"], "the decompressed model generated nothing"
    assert report["versions"]["llmcompressor"] == "0.14.0.1"
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)


@pytest.mark.slow
def test_w4a16_gptq_export_calibrates_on_rendered_training_data(qwen256: Path, llmcompressor_env: Path,
                                                                tmp_path: Path, demo_data_dir: Path) -> None:
    out = tmp_path / "gptq"
    options = ExportOptions(scheme="w4a16-gptq", dataset="glaive_toolcall_en_demo", dataset_dir=str(demo_data_dir),
                            template="qwen", calib_samples=4, max_seq_length=128, verify_samples=1,
                            verify_max_tokens=64)
    result = vllm_export(qwen256, out, options)
    assert result.calibration_samples == 4

    quant = _quant_config(out)
    assert quant["quant_method"] == "compressed-tensors"
    assert quant["format"] == "pack-quantized"
    weights = quant["config_groups"]["group_0"]["weights"]
    layout = (weights["num_bits"], weights["type"], weights["strategy"], weights["group_size"])
    assert layout == (4, "int", "group", 128)
    assert weights["symmetric"] is True
    assert quant["config_groups"]["group_0"]["input_activations"] is None  # A16: activations stay 16-bit

    tensors = _tensors(out)
    # 8 int4 values per int32; one scale per 128 input columns.
    assert tensors["model.layers.0.self_attn.q_proj.weight_packed"] == ("I32", [256, 32])
    assert tensors["model.layers.0.mlp.down_proj.weight_packed"] == ("I32", [256, 64])
    assert tensors["model.layers.0.mlp.down_proj.weight_scale"][1] == [256, 4]
    assert tensors["model.layers.0.mlp.down_proj.weight_shape"][1] == [2]
    assert "model.layers.0.mlp.down_proj.weight" not in tensors
    assert tensors["lm_head.weight"][0] == "F32"
    _assert_travels(qwen256, out)
    assert (out / "recipe.yaml").read_text().count("GPTQModifier") == 1

    check = result.verification
    assert check["finite"] and check["mean_kl"] > 0
    assert check["generated_ids"]
    assert "mean KL" in result.summary()


def test_calibrated_schemes_need_training_data(qwen256: Path, tmp_path: Path) -> None:
    with pytest.raises(VllmExportError, match="calibrates on your training data"):
        vllm_export(qwen256, tmp_path / "out", ExportOptions(scheme="w4a16-gptq"))
    assert not (tmp_path / "out").exists()


def test_source_checks_name_the_directory_and_reason(qwen256: Path, tmp_path: Path) -> None:
    with pytest.raises(VllmExportError, match="unknown --scheme 'int3'"):
        vllm_export(qwen256, tmp_path / "out", ExportOptions(scheme="int3"))
    with pytest.raises(VllmExportError, match="not a directory"):
        vllm_export(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(VllmExportError, match="source directory"):
        vllm_export(qwen256, qwen256)

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(VllmExportError, match="LoRA adapter; merge it first"):
        vllm_export(adapter, tmp_path / "out")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(qwen256 / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(VllmExportError, match="no \\*.safetensors"):
        vllm_export(pickled, tmp_path / "out")

    quantized = tmp_path / "quantized"
    shutil.copytree(qwen256, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors"}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(VllmExportError, match="already quantized"):
        vllm_export(quantized, tmp_path / "out")


def test_tokenizer_files_copied_but_not_weights(qwen256: Path, tmp_path: Path) -> None:
    copied = copy_tokenizer_files(qwen256, tmp_path)
    assert "chat_template.jinja" in copied and "generation_config.json" in copied and "tokenizer.json" in copied
    assert not any(name.endswith(".safetensors") or name == "config.json" for name in copied)


def test_isolated_environment_pins_the_main_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from tooltune.vllm import env

    assert env.torch_requirement() == "torch==" + metadata.version("torch").split("+")[0]
    monkeypatch.setenv("TOOLTUNE_VLLM_ENV", str(tmp_path / "elsewhere"))
    assert env.env_dir() == tmp_path / "elsewhere"
    assert not env.is_ready()  # nothing built there: ensure_env would build it, never reuse a half-built one
    (tmp_path / "elsewhere" / "bin").mkdir(parents=True)
    (tmp_path / "elsewhere" / "bin" / "python").touch()
    stale = {"requirements": {"llmcompressor": "llmcompressor==0.1.0", "torch": env.torch_requirement()}}
    (tmp_path / "elsewhere" / env.MARKER_FILE).write_text(json.dumps(stale))
    assert not env.is_ready()  # another llm-compressor version: rebuilt
