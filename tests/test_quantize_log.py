"""Quantize keeps llama.cpp's per-tensor lines in a log file and prints one summary line with the fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tooltune.gguf.quantize_log import parse_fallbacks

# The exact text llama-quant.cpp writes (tensor_type_fallback and the closing warning), two groups and one F16 case.
LOG = (
    "[   1/  30]                  blk.0.attn_q.weight - [   64,    64,     1,     1], type =    f16, "
    "warning: blk.0.attn_q.weight                  - ncols     64 not divisible by 256 (required for type    q4_K) "
    "-> falling back to    q5_0\n"
    "warning: blk.0.ffn_down.weight                - ncols    128 not divisible by 256 (required for type    q6_K) "
    "-> falling back to    q8_0\n"
    "warning: blk.1.attn_q.weight                  - ncols     64 not divisible by 256 (required for type    q4_K) "
    "-> falling back to    q5_0\n"
    "warning: odd.weight                           - ncols     20 not divisible by 256 (required for type    q4_K) "
    "(WARNING: must use F16 due to unusual shape) -> falling back to     f16\n"
    "llama_model_quantize_impl: WARNING: 4 of 30 tensor(s) required fallback quantization\n"
)


def test_parse_fallbacks_groups_by_reason() -> None:
    fallbacks = parse_fallbacks(LOG)
    assert fallbacks.count == 4 and fallbacks.total_tensors == 30
    assert fallbacks.groups == {(64, 256, "q4_K", "q5_0"): 2, (128, 256, "q6_K", "q8_0"): 1,
                                (20, 256, "q4_K", "f16"): 1}
    summary = fallbacks.summary()
    assert summary.startswith("4 of 30 tensors fell back: 2× q4_K→q5_0 (rows of 64 not divisible by 256)")
    assert "q6_K→q8_0" in summary and "q4_K→f16" in summary
    assert parse_fallbacks("nothing here").summary() == "no tensor fell back"


llama_cpp = pytest.importorskip("llama_cpp")


def test_quantize_sends_per_tensor_lines_to_a_log(tiny_llama_dir: Path, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    """The tiny model's rows are 64 wide, so every K-quant matrix falls back — as SmolLM2's 576-wide ones do."""
    from tooltune.gguf.convert import convert_to_gguf
    from tooltune.gguf.quantize import quantize_gguf

    f16 = convert_to_gguf(tiny_llama_dir, tmp_path / "m-f16.gguf", "f16")
    capfd.readouterr()
    result = quantize_gguf(f16, tmp_path / "m-Q4_K_M.gguf", "Q4_K_M", threads=1, show_progress=False)
    printed = capfd.readouterr()
    assert "falling back" not in printed.out + printed.err  # nothing per tensor on the terminal
    assert result.log_path == tmp_path / "m-Q4_K_M.quantize.log"
    log = result.log_path.read_text(encoding="utf-8")
    assert log.count("falling back to") == result.fallbacks.count > 0
    assert result.fallbacks.total_tensors is not None and result.fallbacks.count <= result.fallbacks.total_tensors
    summary = result.summary()
    assert f"{result.fallbacks.count} of {result.fallbacks.total_tensors} tensors fell back" in summary
    assert "not divisible by 256" in summary and str(result.log_path) in summary
    # The previous log callback is back: a later llama.cpp load logs as before (to the terminal, not the file).
    size_before = result.log_path.stat().st_size
    llama_cpp.Llama(model_path=str(result.output), n_ctx=64, verbose=True)
    assert result.log_path.stat().st_size == size_before
    assert "llama_model_loader" in capfd.readouterr().err
