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


# ---- the families users bring (issue 13): tiny random weights, each family's real tokenizer files ----

FAMILIES_DIR = FIXTURES / "families"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def _copy_tokenizer_files(family: str, out_dir: Path) -> None:
    """The family's tokenizer files as a downloaded model folder has them (not re-saved through transformers).

    tokenizer.json comes from the compact fixtures that family_fixtures rebuilds (one stored copy per tokenizer,
    checked equal to upstream); Phi-4-mini's is stored xz-compressed beside its config."""
    import lzma
    import shutil

    from family_fixtures import WITH_TOKENIZER, family_tokenizer_dir

    family_dir = FAMILIES_DIR / family
    if family in WITH_TOKENIZER:
        family_tokenizer_dir(family, out_dir)
        (out_dir / "chat_template.jinja").unlink()  # the tokenizer files only, as before
    else:
        with lzma.open(family_dir / "tokenizer.json.xz", "rb") as packed:
            (out_dir / "tokenizer.json").write_bytes(packed.read())
    for name in _TOKENIZER_FILES[1:]:
        if (family_dir / name).is_file():
            shutil.copyfile(family_dir / name, out_dir / name)


def _tiny_family_kwargs(vocab_size: int, **ids: Any) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "float32",
        **ids,
    }


def _save_family(model: torch.nn.Module, family: str, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.float32).save_pretrained(out_dir, safe_serialization=True)
    _copy_tokenizer_files(family, out_dir)
    return out_dir


def _perturb_norms(model: torch.nn.Module, std: float = 0.1) -> None:
    # Norm weights start as constants; random values make a wrong mapping or a missing shift visible.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(torch.randn_like(param) * std)


def make_tiny_qwen3_family(out_dir: str | Path, seed: int = 0) -> Path:
    """Qwen3-0.6B's layout (q_norm/k_norm, tied head, vocab padded to 151936) with Qwen3's tokenizer."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(**_tiny_family_kwargs(151936, bos_token_id=151643, eos_token_id=151645),
                         max_position_embeddings=40960, rope_theta=1000000.0, tie_word_embeddings=True)
    model = Qwen3ForCausalLM(config)
    _perturb_norms(model)
    return _save_family(model, "qwen3", out_dir)


def make_tiny_llama32(out_dir: str | Path, seed: int = 0) -> Path:
    """Llama-3.2-1B-Instruct's layout: tied embeddings and llama3 RoPE scaling (llama.cpp's rope_freqs tensor)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    rope = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    config = LlamaConfig(**_tiny_family_kwargs(128256, bos_token_id=128000, eos_token_id=[128001, 128008, 128009]),
                         max_position_embeddings=131072, rope_scaling=rope, rope_theta=500000.0,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    _perturb_norms(model)
    return _save_family(model, "llama3.2", out_dir)


def make_tiny_mistral(out_dir: str | Path, seed: int = 0) -> Path:
    """Mistral-7B-Instruct-v0.3's layout (untied head, no sliding window) with its SentencePiece tokenizer."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(**_tiny_family_kwargs(32768, bos_token_id=1, eos_token_id=2),
                           max_position_embeddings=32768, rope_theta=1000000.0, sliding_window=None,
                           tie_word_embeddings=False)
    model = MistralForCausalLM(config)
    _perturb_norms(model)
    return _save_family(model, "mistral", out_dir)


def make_tiny_smollm3(out_dir: str | Path, seed: int = 0) -> Path:
    """SmolLM3-3B's layout (no RoPE on every 4th layer: 4 layers here so one of them is) with its tokenizer."""
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    torch.manual_seed(seed)
    kwargs = _tiny_family_kwargs(128256, bos_token_id=128000, eos_token_id=128012, pad_token_id=128004)
    kwargs["num_hidden_layers"] = 4
    config = SmolLM3Config(**kwargs, max_position_embeddings=65536, rope_theta=5000000.0,
                           no_rope_layer_interval=4, tie_word_embeddings=True)
    model = SmolLM3ForCausalLM(config)
    _perturb_norms(model)
    return _save_family(model, "smollm3", out_dir)


def make_tiny_phi4_mini(out_dir: str | Path, seed: int = 0) -> Path:
    """Phi-4-mini's layout: fused qkv and gate_up, 3/4 partial rotary, longrope factors, tied head, vocab 200064."""
    import json

    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    rotary_half = int(16 * 0.75) // 2  # factors per rotated frequency pair of one head
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
            "original_max_position_embeddings": 4096,
            "long_factor": [1.0 + 0.5 * i for i in range(rotary_half)],
            "short_factor": [1.0 + 0.1 * i for i in range(rotary_half)]}
    config = Phi3Config(**_tiny_family_kwargs(200064, bos_token_id=199999, eos_token_id=199999, pad_token_id=199999),
                        max_position_embeddings=131072, original_max_position_embeddings=4096,
                        partial_rotary_factor=0.75, rope_scaling=rope, rope_theta=10000.0, sliding_window=262144,
                        tie_word_embeddings=True)
    model = Phi3ForCausalLM(config)
    _perturb_norms(model)
    out = _save_family(model, "phi4-mini", out_dir)
    # Phi-4-mini's own tokenizer_config names GPT2Tokenizer, which is what llama.cpp's converter keys its BPE path on
    # (the fixture's config was written without the upstream file).
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "GPT2Tokenizer"
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return out


# Gemma's files may not be redistributed, so its test tokenizer is trained here: a SentencePiece model with Gemma's
# layout (pad/eos/bos/unk at ids 0-3, byte fallback, no dummy prefix, turn markers as user-defined pieces).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _train_gemma_like_spm(out_dir: Path, vocab_size: int = 512) -> None:
    import io
    import json

    import sentencepiece as spm

    text = ("the weather in paris is sunny today call the tool get_weather with city and unit celsius "
            "model user system function result json value name arguments 12345 我想在 北京 工作 ok yes no")
    words = text.split(" ")
    sentences = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(400)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, character_coverage=1.0,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], minloglevel=2)
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
              "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
              "chat_template": GEMMA3_CHAT_TEMPLATE}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def make_tiny_gemma3(out_dir: str | Path, seed: int = 0) -> Path:
    """Gemma 3 text model layout (q/k norms, pre/post feed-forward norms, local + global RoPE, sliding window) with
    a SentencePiece tokenizer trained here."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _train_gemma_like_spm(out_dir)
    torch.manual_seed(seed)
    config = Gemma3TextConfig(**_tiny_family_kwargs(512, pad_token_id=0, eos_token_id=1, bos_token_id=2),
                              max_position_embeddings=32768, sliding_window=512, query_pre_attn_scalar=16,
                              rope_theta=1000000.0, rope_local_base_freq=10000.0, tie_word_embeddings=True)
    model = Gemma3ForCausalLM(config)
    _perturb_norms(model)
    model.to(torch.float32).save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def make_tiny_mistral_saved(out_dir: str | Path, seed: int = 0) -> Path:
    """The tiny Mistral as a fine-tune leaves it: the tokenizer re-saved by transformers (tokenizer.json only, no
    tokenizer.model)."""
    out = make_tiny_mistral(out_dir, seed)
    for name in _TOKENIZER_FILES:
        (out / name).unlink(missing_ok=True)
    from family_fixtures import family_tokenizer_dir

    source = family_tokenizer_dir("mistral", out.parent / f"{out.name}-mistral-tokenizer")
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


# The family builders by family name, for the session-wide cache in conftest (``tiny_family_model``).
FAMILY_BUILDERS = {
    "qwen3": make_tiny_qwen3_family,
    "llama3.2": make_tiny_llama32,
    "mistral": make_tiny_mistral,
    "mistral-saved": make_tiny_mistral_saved,
    "smollm3": make_tiny_smollm3,
    "phi4-mini": make_tiny_phi4_mini,
    "gemma3": make_tiny_gemma3,
}

