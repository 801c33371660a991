"""llama.cpp (llama-cpp-python) loads every GGUF tooltune writes, computes what transformers computes, tokenizes like
the HF tokenizer, and quantizes it with its own quantizer."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from tooltune.gguf.convert import convert_to_gguf

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT_MESSAGES = [
    {"role": "system", "content": "You call tools."},
    {"role": "user", "content": "What's the weather in Paris? 北京 also, 12345 ok"},
]


@pytest.fixture(scope="module")
def tiny_qwen3_dir(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer_dir: Path) -> Path:
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    with torch.no_grad():  # q/k norms start at ones; perturb them so their mapping is really exercised
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.normal_(1.0, 0.1)
            layer.self_attn.k_norm.weight.normal_(1.0, 0.1)
    out = tmp_path_factory.mktemp("tiny_qwen3") / "model"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def llama_f16(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_to_gguf(tiny_llama_dir, tmp_path_factory.mktemp("gguf") / "llama-f16.gguf", "f16")


@pytest.fixture(scope="module")
def qwen2_f16(tiny_qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_to_gguf(tiny_qwen2_dir, tmp_path_factory.mktemp("gguf") / "qwen2-f16.gguf", "f16")


llama_cpp = pytest.importorskip("llama_cpp")


def _hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _llama_cpp_logits(gguf_path: Path, ids: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=64, n_batch=64, logits_all=True, verbose=False,
                          n_threads=2)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)])
    llm.close()
    return logits


def _prompt_ids(model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(PROMPT_MESSAGES, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"][:48]


@pytest.mark.parametrize("arch", ["llama", pytest.param("qwen2", marks=pytest.mark.slow),
                                  pytest.param("qwen3", marks=pytest.mark.slow)])
def test_llama_cpp_logits_match_transformers(arch: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model_dir = request.getfixturevalue({"llama": "tiny_llama_dir", "qwen2": "tiny_qwen2_dir",
                                         "qwen3": "tiny_qwen3_dir"}[arch])
    ids = _prompt_ids(model_dir)
    expected = _hf_logits(model_dir, ids)
    # llama.cpp keeps its KV cache in f16 by default, so even the f32 file is compared at fp16 tolerance.
    for outtype, tolerance in (("f32", 2e-3), ("f16", 5e-3)):
        got = _llama_cpp_logits(convert_to_gguf(model_dir, tmp_path / f"{arch}-{outtype}.gguf", outtype), ids)
        scale = np.abs(expected).max()
        diff = float(np.abs(got - expected).max())
        print(f"{arch} {outtype}: max |llama.cpp - transformers| = {diff:.2e} (logit scale {scale:.2f})")
        assert diff <= tolerance * max(1.0, scale), (outtype, diff)
        np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


def test_llama_cpp_tokenizes_like_hf(llama_f16: Path, qwen2_f16: Path, tiny_llama_dir: Path,
                                     tiny_qwen2_dir: Path) -> None:
    from transformers import AutoTokenizer

    text = "Hello world!  <|im_start|>user\n我想在apple工作 3333 it's 'RE\t tabs\n\n\n"
    for gguf_path, model_dir in ((llama_f16, tiny_llama_dir), (qwen2_f16, tiny_qwen2_dir)):
        llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=32, verbose=False, vocab_only=True)
        hf = AutoTokenizer.from_pretrained(model_dir)(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf
        llm.close()


# ---- quantize with llama.cpp's own quantizer ----

from tooltune.gguf.quantize import QuantizeError, quantize_gguf  # noqa: E402


@pytest.fixture(scope="module")
def llama256_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rows of 256 so K-quants apply to every matrix (llama.cpp falls back to other types for odd row sizes)."""
    from tiny_models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("llama256") / "model", hidden_size=256, intermediate_size=512,
                           num_attention_heads=4, num_key_value_heads=2)


def test_quantize_q4_k_m_loads_and_generates(llama256_dir: Path, tmp_path: Path) -> None:
    f16 = convert_to_gguf(llama256_dir, tmp_path / "m-f16.gguf", "f16")
    result = quantize_gguf(f16, tmp_path / "m-q4_k_m.gguf", "q4_k_m", threads=2, show_progress=False)
    assert result.qtype == "Q4_K_M"
    assert 4.0 < result.bits_per_weight < 7.0  # the Q6_K embedding dominates a model this small
    assert result.size_bytes < f16.stat().st_size / 2
    reader = gguf.GGUFReader(result.output)
    types = {t.tensor_type.name for t in reader.tensors}
    assert {"Q4_K", "Q6_K", "F32"} <= types
    assert reader.fields["general.file_type"].contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    llm = llama_cpp.Llama(model_path=str(result.output), n_ctx=64, verbose=False, n_threads=2)
    out = llm.create_completion("Hello", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] > 0
    llm.close()


def test_q8_0_converter_vs_llama_cpp_quantizer(tmp_path: Path) -> None:
    """Our Q8_0 equals llama.cpp's quantization of the F16 file tensor for tensor when the checkpoint is fp16.

    From an fp32 checkpoint they differ by design: we quantize the fp32 weights (one rounding), llama-quantize starts
    from the already-rounded F16 file (two roundings), exactly as llama.cpp's own converter behaves.
    """
    from tiny_models import make_tiny_llama
    from transformers import AutoModelForCausalLM

    model_dir = make_tiny_llama(tmp_path / "fp16")
    AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16).save_pretrained(model_dir)
    ours = convert_to_gguf(model_dir, tmp_path / "ours-q8.gguf", "q8_0")
    f16 = convert_to_gguf(model_dir, tmp_path / "f16.gguf", "f16")
    theirs = quantize_gguf(f16, tmp_path / "theirs-q8.gguf", "Q8_0", threads=2, show_progress=False).output
    a = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    b = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].tensor_type == b[name].tensor_type, name
        assert np.asarray(a[name].data).tobytes() == np.asarray(b[name].data).tobytes(), name


def test_quantize_errors(tmp_path: Path, llama256_dir: Path) -> None:
    not_gguf = tmp_path / "model.safetensors"
    not_gguf.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(QuantizeError, match="not a GGUF file"):
        quantize_gguf(not_gguf, tmp_path / "o.gguf", "Q4_K_M")
    f16 = convert_to_gguf(llama256_dir, tmp_path / "m-f16.gguf", "f16")
    with pytest.raises(QuantizeError, match="unknown quantization type 'Q4_K_X'"):
        quantize_gguf(f16, tmp_path / "o.gguf", "Q4_K_X")
    q8_result = quantize_gguf(f16, tmp_path / "m-q8.gguf", "Q8_0", threads=2, show_progress=False)
    q8 = q8_result.output
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_gguf(q8, tmp_path / "o.gguf", "Q4_0")
    # With --allow-requantize llama.cpp does it (the embedding stays at 6+ bits, so compare with the Q8_0 file).
    requantized = quantize_gguf(q8, tmp_path / "m-q4.gguf", "Q4_0", allow_requantize=True, show_progress=False)
    assert requantized.bits_per_weight < q8_result.bits_per_weight
    assert gguf.GGUFReader(requantized.output).fields["general.file_type"].contents() == 2  # MOSTLY_Q4_0
    with pytest.raises(QuantizeError, match="importance matrix"):
        quantize_gguf(f16, tmp_path / "o.gguf", "IQ2_XXS")
    assert not (tmp_path / "o.gguf").exists()
    # The struct header reader gives gguf-py's figures (tensor bytes, weights) for float and quantized files ...
    from tooltune.gguf.quantize import measure_gguf

    for path in (f16, q8, requantized.output):
        tensors = gguf.GGUFReader(path).tensors
        size = measure_gguf(path)
        assert (size.tensor_bytes, size.n_elements) == (sum(int(t.n_bytes) for t in tensors),
                                                       sum(int(t.n_elements) for t in tensors))
    # ... and a file cut short of its tensors is refused by name, before llama.cpp reads past its end.
    cut = tmp_path / "cut-f16.gguf"
    cut.write_bytes(f16.read_bytes()[:-1000])
    with pytest.raises(QuantizeError, match=r"cut-f16\.gguf: damaged GGUF \(truncated: its tensors end at byte"):
        quantize_gguf(cut, tmp_path / "o.gguf", "Q4_K_M")


# ---- gguf-report: measured table ----


@pytest.mark.slow
def test_gguf_report_measures_quality_against_reference(llama256_dir: Path, tmp_path: Path) -> None:
    import json

    from tooltune.gguf.report import gguf_report

    f16 = convert_to_gguf(llama256_dir, tmp_path / "m-F16.gguf", "f16")
    q8 = quantize_gguf(f16, tmp_path / "m-Q8_0.gguf", "Q8_0", threads=2, show_progress=False).output
    q4 = quantize_gguf(f16, tmp_path / "m-Q4_0.gguf", "Q4_0", threads=2, show_progress=False).output
    # 32 prompt + 64 decoded tokens do not fit a 64-token chunk: the report's context must hold both.
    report = gguf_report([f16, q8, q4], max_tokens=128, chunk_size=64, decode_tokens=64, threads=2,
                         show_progress=False)
    ref, row_q8, row_q4 = report.rows
    assert report.n_tokens_scored == 2 * 63
    assert ref.mean_kl is None and ref.file_type == "F16"
    assert row_q8.file_type == "Q8_0" and row_q4.file_type == "Q4_0"
    assert row_q4.bits_per_weight < row_q8.bits_per_weight < ref.bits_per_weight
    assert all(np.isfinite(r.perplexity) and r.perplexity > 1 and r.decode_tokens_per_s > 0 for r in report.rows)
    # Coarser quantization drifts further from the F16 distribution.
    assert 0 <= row_q8.mean_kl < row_q4.mean_kl
    assert json.loads(report.to_json())["rows"][2]["file_type"] == "Q4_0"
    assert "| m-Q4_0.gguf | Q4_0 |" in report.to_markdown()


def test_cli_reports_user_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tooltune.cli import app

    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    result = CliRunner().invoke(app, ["quantize", str(bad), "Q4_K_M"])
    assert isinstance(result.exception, QuantizeError)
    assert "not a GGUF file" in str(result.exception)
    result = CliRunner().invoke(app, ["quantize", "--list-types", str(bad), "x"])
    assert "Q4_K_M" in result.output and "Q6_K" in result.output
