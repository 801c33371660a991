"""`tooltune lora-gguf`: a PEFT LoRA adapter → llama.cpp LoRA GGUF, the file llama.cpp's own convert_lora_to_gguf.py
writes, and base GGUF + adapter GGUF through llama.cpp giving the merged model's logits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from tooltune.gguf.adapter import AdapterGGUFError, check_adapter_gguf, convert_adapter, read_gguf_header
from tooltune.gguf.convert import convert_to_gguf, permute_for_llama_cpp

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, out_dir: Path, targets: list[str] | None = None, seed: int = 1,
                 merged_dir: Path | None = None, **lora: object) -> Path:
    """A LoRA on ``base_dir`` with random non-zero B (an untrained adapter is a no-op and would prove nothing);
    with ``merged_dir`` the merged model is saved there too (tokenizer copied from the base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets or ALL_PROJECTIONS, **lora)  # type: ignore[arg-type]
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(out_dir)
    if merged_dir is not None:
        shutil.copytree(base_dir, merged_dir)
        peft_model.merge_and_unload().save_pretrained(merged_dir, safe_serialization=True)
    return out_dir


@pytest.fixture(scope="module")
def llama_lora(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("llama_lora")
    adapter = make_adapter(tiny_llama_dir, root / "adapter", merged_dir=root / "merged")
    return adapter, root / "merged"


@pytest.fixture(scope="module")
def llama_ggufs(tiny_llama_dir: Path, llama_lora: tuple[Path, Path],
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llama_lora_gguf")
    adapter, merged = llama_lora
    base_gguf = convert_to_gguf(tiny_llama_dir, root / "base-f16.gguf", "f16")
    return {
        "base": base_gguf,
        "merged": convert_to_gguf(merged, root / "merged-f16.gguf", "f16"),
        "adapter": convert_adapter(adapter, base_gguf, root / "adapter-f16.gguf", "f16").path,
    }


def _tensors(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def _fields(path: Path) -> dict[str, object]:
    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


# ---------------------------------------------------------------------------------------------------- layout


def test_layout_orientation_and_llama_row_order(llama_lora: tuple[Path, Path], llama_ggufs: dict[str, Path]) -> None:
    from safetensors.numpy import load_file

    fields = _fields(llama_ggufs["adapter"])
    assert fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 16.0
    assert fields["general.architecture"] == "llama"
    tensors = _tensors(llama_ggufs["adapter"])
    base = read_gguf_header(llama_ggufs["base"]).tensor_shapes  # gguf-py's reader decodes the vocab: slow
    assert len(tensors) == 2 * 7 * 2  # 7 projections × 2 layers, A and B each
    for name, tensor in tensors.items():
        assert name.removesuffix(".lora_a").removesuffix(".lora_b") in base, name
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F16
    # ggml order: lora_a is [in, rank], lora_b is [rank, out]; the base's q is [in, out].
    assert list(tensors["blk.0.attn_q.weight.lora_a"].shape) == [64, 8]
    assert list(tensors["blk.0.attn_k.weight.lora_b"].shape) == [8, 32]
    assert list(base["blk.0.attn_k.weight"]) == [64, 32]
    # q/k: B's output rows move into llama.cpp's interleaved RoPE order, A is untouched; v is not permuted.
    weights = load_file(llama_lora[0] / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.0.self_attn"
    k_b = permute_for_llama_cpp(weights[f"{prefix}.k_proj.lora_B.weight"], 2)
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.attn_k.weight.lora_b"].data), k_b.astype(np.float16))
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.attn_q.weight.lora_a"].data),
                                  weights[f"{prefix}.q_proj.lora_A.weight"].astype(np.float16))
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.attn_v.weight.lora_b"].data),
                                  weights[f"{prefix}.v_proj.lora_B.weight"].astype(np.float16))
    info = check_adapter_gguf(llama_ggufs["adapter"], llama_ggufs["base"])
    assert (info.n_pairs, info.rank, info.alpha) == (14, 8, 16.0)


def _compare_with_llama_cpp(ours: Path, theirs: Path) -> None:
    a, b = _tensors(ours), _tensors(theirs)
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = a[name], b[name]
        assert (x.tensor_type, list(x.shape)) == (y.tensor_type, list(y.shape)), name
        assert np.asarray(x.data).tobytes() == np.asarray(y.data).tobytes(), name
    assert _fields(ours) == _fields(theirs)
    assert ours.read_bytes() == theirs.read_bytes()  # same key and tensor order too: the very same file


@pytest.mark.parametrize("arch,outtype", [("llama", "f16"), pytest.param("qwen2", "q8_0", marks=pytest.mark.slow)])
def test_same_file_as_llama_cpp_convert_lora_to_gguf(arch: str, outtype: str, request: pytest.FixtureRequest,
                                                      tmp_path: Path) -> None:
    from llama_cpp_source import llama_cpp_script

    script = llama_cpp_script("convert_lora_to_gguf.py")
    if script is None:
        pytest.skip("llama.cpp's convert_lora_to_gguf.py unavailable (no llama-cpp-python sdist)")
    if arch == "llama":
        base_dir, adapter = request.getfixturevalue("tiny_llama_dir"), request.getfixturevalue("llama_lora")[0]
    else:  # Qwen2: no q/k permutation, attention biases in the base; a subset of targets
        base_dir = request.getfixturevalue("tiny_qwen2_dir")
        adapter = make_adapter(base_dir, tmp_path / "qwen_adapter", targets=["q_proj", "v_proj", "down_proj"])
    theirs = tmp_path / "theirs.gguf"
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    run = subprocess.run([sys.executable, str(script), str(adapter), "--base", str(base_dir), "--outfile", str(theirs),
                          "--outtype", outtype], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ours = convert_adapter(adapter, base_dir, tmp_path / "ours.gguf", outtype).path
    _compare_with_llama_cpp(ours, theirs)


# ---------------------------------------------------------------------------------------------------- behaviour


def test_base_plus_adapter_gives_merged_logits_in_llama_cpp(llama_ggufs: dict[str, Path]) -> None:
    pytest.importorskip("llama_cpp")
    from tooltune.gguf.adapter_check import _load, _logits, check_adapter_logits

    check = check_adapter_logits(llama_ggufs["base"], llama_ggufs["adapter"], llama_ggufs["merged"], threads=2)
    print(check.summary())
    assert check.passed, check.summary()
    assert check.top1_agreement > 0.97
    # The check can fail: the base alone is far from the merged model, so the adapter really is applied.
    base, merged = _load(llama_ggufs["base"], None, 64, 2), _load(llama_ggufs["merged"], None, 64, 2)
    ids = base.tokenize(b"<|im_start|>user\nHello there<|im_end|>", add_bos=True, special=True)
    gap = float(np.abs(_logits(base, ids) - _logits(merged, ids)).max())
    base.close()
    merged.close()
    print(f"base alone vs merged: {gap:.3f}; base + adapter vs merged: {check.max_abs_diff:.2e}")
    assert gap > 20 * check.max_abs_diff


def test_adapter_on_the_last_layers_only(tiny_llama_dir: Path, llama_ggufs: dict[str, Path], tmp_path: Path) -> None:
    """`--lora_layers` trains some decoder layers only: the file holds just their matrices, and llama.cpp's base +
    adapter still gives the merged model's logits."""
    pytest.importorskip("llama_cpp")
    from tooltune.gguf.adapter_check import check_adapter_logits

    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter", merged_dir=tmp_path / "merged",
                           layers_to_transform=[1])
    converted = convert_adapter(adapter, llama_ggufs["base"], tmp_path / "adapter.gguf", "f16").path
    assert {name.split(".")[1] for name in _tensors(converted)} == {"1"}
    merged = convert_to_gguf(tmp_path / "merged", tmp_path / "merged.gguf", "f16")
    check = check_adapter_logits(llama_ggufs["base"], converted, merged, threads=2)
    assert check.passed, check.summary()


def test_cli_converts_and_checks(llama_ggufs: dict[str, Path], llama_lora: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    out = tmp_path / "cli-adapter.gguf"
    run = subprocess.run([sys.executable, "-m", "tooltune", "lora-gguf", str(llama_lora[0]), "--base",
                          str(llama_ggufs["base"]), "-o", str(out), "--check-merged", str(llama_ggufs["merged"])],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "LoRA adapter · F16 · 14 matrices · rank 8" in run.stdout
    assert "max abs logit diff" in run.stdout and "OK" in run.stdout
    assert out.read_bytes() == llama_ggufs["adapter"].read_bytes()
    # The base alone as the "merged" model: the check must fail loudly.
    run = subprocess.run([sys.executable, "-m", "tooltune", "lora-gguf", str(llama_lora[0]), "--base",
                          str(llama_ggufs["base"]), "-o", str(out), "--check-merged", str(llama_ggufs["base"])],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert "does not reproduce the merged model" in run.stderr


def test_rslora_and_alpha_pattern_fold_into_b(tiny_llama_dir: Path, tmp_path: Path) -> None:
    # llama.cpp scales by alpha/rank with one alpha per file; PEFT's rsLoRA (alpha/sqrt(r)) and per-module alphas
    # are folded into B so the product equals PEFT's.
    from safetensors.numpy import load_file

    adapter = make_adapter(tiny_llama_dir, tmp_path / "a", targets=["q_proj", "v_proj"], use_rslora=True,
                           alpha_pattern={"v_proj": 4})
    out = convert_adapter(adapter, tiny_llama_dir, tmp_path / "a.gguf", "f32").path
    weights = load_file(adapter / "adapter_model.safetensors")
    tensors = _tensors(out)
    b_q = weights["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
    b_v = weights["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    # llama.cpp: 16/8 · B'; PEFT: alpha/sqrt(8) · B.
    np.testing.assert_allclose(np.asarray(tensors["blk.1.attn_q.weight.lora_b"].data),
                               permute_for_llama_cpp(b_q * (16 / 8**0.5) / 2, 4), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(tensors["blk.1.attn_v.weight.lora_b"].data), b_v * (4 / 8**0.5) / 2,
                               rtol=1e-6)


# ---------------------------------------------------------------------------------------------------- refusals


def _edited_adapter(source: Path, target: Path, **config_changes: object) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "adapter_config.json").read_text())
    config.update(config_changes)
    (target / "adapter_config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize("changes,reason", [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "LoRA on embed_tokens"),
    ({"bias": "all"}, "trained biases"),
    ({"peft_type": "IA3"}, "peft_type is IA3"),
])
def test_refuses_what_llama_cpp_cannot_apply(llama_lora: tuple[Path, Path], tiny_llama_dir: Path, tmp_path: Path,
                                             changes: dict[str, object], reason: str) -> None:
    adapter = _edited_adapter(llama_lora[0], tmp_path / "edited", **changes)
    with pytest.raises(AdapterGGUFError, match=reason) as info:
        convert_adapter(adapter, tiny_llama_dir, tmp_path / "o.gguf")
    assert "tooltune export" in str(info.value)  # the fallback is named
    assert not (tmp_path / "o.gguf").exists()


def test_refuses_embedding_tensors_and_foreign_modules(tiny_llama_dir: Path, llama_lora: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    weights = load_file(llama_lora[0] / "adapter_model.safetensors")
    cases = {
        "lm_head": ({"base_model.model.lm_head.weight": np.zeros((4, 64), np.float32)},
                    "trains the token embeddings or LM head"),
        "norm": ({"base_model.model.model.layers.0.input_layernorm.lora_A.weight": np.zeros((8, 64), np.float32),
                  "base_model.model.model.layers.0.input_layernorm.lora_B.weight": np.zeros((64, 8), np.float32)},
                 "not a matmul llama.cpp applies LoRA to"),
    }
    for label, (extra, reason) in cases.items():
        adapter = shutil.copytree(llama_lora[0], tmp_path / label)
        save_file(weights | extra, adapter / "adapter_model.safetensors")
        with pytest.raises(AdapterGGUFError, match=reason):
            convert_adapter(adapter, tiny_llama_dir, tmp_path / "o.gguf")
    unpaired = shutil.copytree(llama_lora[0], tmp_path / "unpaired")
    save_file({k: v for k, v in weights.items() if "layers.1.mlp.up_proj.lora_B" not in k},
              unpaired / "adapter_model.safetensors")
    with pytest.raises(AdapterGGUFError, match="model.layers.1.mlp.up_proj has no lora_B"):
        convert_adapter(unpaired, tiny_llama_dir, tmp_path / "o.gguf")


def test_wrong_base_and_missing_files(llama_lora: tuple[Path, Path], llama_ggufs: dict[str, Path],
                                      tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    adapter = llama_lora[0]
    # Same module names, other architecture and shapes: named, with the shapes.
    with pytest.raises(AdapterGGUFError, match=r"trained on .* \(llama, 2 layers\) but the base given.* is qwen2"):
        convert_adapter(adapter, tiny_qwen2_dir, tmp_path / "o.gguf")
    wide = _edited_adapter(adapter, tmp_path / "wide", base_model_name_or_path=None)
    from tiny_models import make_tiny_llama

    wider_base = make_tiny_llama(tmp_path / "wider", hidden_size=128, intermediate_size=256)
    with pytest.raises(AdapterGGUFError, match=r"is \d+×\d+ \(out×in\) but .*wider's blk\.0\.\w+\.weight is \d+×\d+"):
        convert_adapter(wide, wider_base, tmp_path / "o.gguf")
    with pytest.raises(AdapterGGUFError, match="adapter directory not found"):
        convert_adapter(tmp_path / "nowhere", tiny_qwen2_dir, tmp_path / "o.gguf")
    no_weights = _edited_adapter(adapter, tmp_path / "no_weights")
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterGGUFError, match="adapter_model.safetensors: missing"):
        convert_adapter(no_weights, llama_ggufs["base"], tmp_path / "o.gguf")
    with pytest.raises(AdapterGGUFError, match="base not found"):
        convert_adapter(adapter, tmp_path / "no_base", tmp_path / "o.gguf")
    with pytest.raises(AdapterGGUFError, match="is itself a LoRA adapter GGUF"):
        convert_adapter(adapter, llama_ggufs["adapter"], tmp_path / "o.gguf")
    # Checking a finished pair: an adapter GGUF against the wrong base, a model GGUF given as the adapter.
    qwen_gguf = convert_to_gguf(tiny_qwen2_dir, tmp_path / "qwen.gguf", "f16")
    with pytest.raises(AdapterGGUFError, match="adapter is for architecture llama"):
        check_adapter_gguf(llama_ggufs["adapter"], qwen_gguf)
    with pytest.raises(AdapterGGUFError, match="general.type is model, not 'adapter'"):
        check_adapter_gguf(llama_ggufs["base"], llama_ggufs["base"])


def test_modelfile_with_adapter(llama_ggufs: dict[str, Path], tmp_path: Path, qwen_tokenizer_dir: Path) -> None:
    from tooltune.serve.modelfile import ModelfileError, write_modelfile

    folder = tmp_path / "ship"
    folder.mkdir()
    base = shutil.copy(llama_ggufs["base"], folder / "base.gguf")
    adapter = shutil.copy(llama_ggufs["adapter"], folder / "tools.gguf")
    # The training template (qwen's, whose Go TEMPLATE is proven) is the one the TEMPLATE must render.
    template = (qwen_tokenizer_dir / "chat_template.jinja").read_text()
    out = write_modelfile(base, folder / "Modelfile", chat_template=template, adapter=adapter)
    lines = out.read_text().splitlines()
    assert "FROM ./base.gguf" in lines
    assert lines[lines.index("FROM ./base.gguf") + 1] == "ADAPTER ./tools.gguf"
    assert any(line.startswith('TEMPLATE """') for line in lines)
    with pytest.raises((AdapterGGUFError, ModelfileError), match="not 'adapter'"):
        write_modelfile(base, folder / "Bad", chat_template=template, adapter=base)
