"""Tiny random-weight models with real tokenizers, for tests that need a real engine in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

FIXTURES = Path(__file__).parent / "fixtures"
SMOLLM2_TOKENIZER = FIXTURES / "tokenizers" / "smollm2"
QWEN_TOKENIZER = FIXTURES / "tokenizers" / "qwen2.5"


def _save(model: torch.nn.Module, tokenizer_dir: Path, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _base_kwargs(tokenizer_dir: Path) -> dict[str, Any]:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "torch_dtype": "float32",
    }


def make_tiny_llama(
    out_dir: str | Path, tokenizer_dir: Path = SMOLLM2_TOKENIZER, seed: int = 0, **overrides: Any
) -> Path:
    """A 2-layer LlamaForCausalLM (SmolLM2's architecture) with the given tokenizer."""
    torch.manual_seed(seed)
    kwargs = _base_kwargs(tokenizer_dir) | {"tie_word_embeddings": True, "rope_theta": 100000.0} | overrides
    model = LlamaForCausalLM(LlamaConfig(**kwargs)).to(torch.float32)
    return _save(model, tokenizer_dir, Path(out_dir))


def make_tiny_qwen2(out_dir: str | Path, tokenizer_dir: Path = QWEN_TOKENIZER, seed: int = 0, **overrides: Any) -> Path:
    """A 2-layer Qwen2ForCausalLM (the seed's architecture, q/k/v biases) with the given tokenizer."""
    torch.manual_seed(seed)
    kwargs = _base_kwargs(tokenizer_dir) | {"tie_word_embeddings": False, "rope_theta": 1000000.0} | overrides
    model = Qwen2ForCausalLM(Qwen2Config(**kwargs)).to(torch.float32)
    # Random init leaves biases at zero; make them non-zero so bias handling is actually exercised.
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.02)
    return _save(model, tokenizer_dir, Path(out_dir))
