"""The memory levers of training change nothing but memory and time: the fused LM head, the lean SwiGLU and partial
checkpointing each give the same loss and the same gradients as the stock computation."""

from __future__ import annotations

import pytest
import torch

from tooltune.train.activations import (
    SiluMul,
    activation_bytes_per_token,
    checkpointed_layers,
    lean_swiglu,
    plan_checkpointing,
)
from tooltune.train.args import TrainConfigError
from tooltune.train.batching import PadToLongestCollator
from tooltune.train.loss import TrainedPositionsHead, causal_lm_loss, find_lm_head, fused_head_matches
from tooltune.train.model import enable_gradient_checkpointing


def _tiny_lora(model_dir, targets=("q_proj", "v_proj"), checkpointing=False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    if checkpointing:
        enable_gradient_checkpointing(model)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))
    with torch.no_grad():  # a fresh adapter has B = 0; make it non-zero so gradients reach both A and B
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    peft_model.train()
    return peft_model


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    features = []
    for length, trained in ((40, [(8, 20), (30, 40)]), (25, [(10, 25)]), (12, [])):
        ids = torch.randint(5, vocab, (length,), generator=g).tolist()
        labels = [-100] * length
        for start, end in trained:
            labels[start:end] = ids[start:end]
        features.append({"input_ids": ids, "labels": labels})
    return PadToLongestCollator(pad_token_id=0)(features)


def _loss_and_grads(model, batch, head=None, num_items=None):
    loss, outputs, trained = causal_lm_loss(model, batch, head, num_items)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    return loss.detach(), grads, outputs, trained


def _assert_same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    for x, y in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-7)


def test_silu_mul_gradients_match_autograd():
    g = torch.Generator().manual_seed(0)
    gate = torch.randn(7, 11, dtype=torch.float64, generator=g, requires_grad=True)
    up = torch.randn(7, 11, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(SiluMul.apply, (gate, up))
    torch.testing.assert_close(SiluMul.apply(gate, up), torch.nn.functional.silu(gate) * up)


@pytest.mark.parametrize("num_items", [None, 50])
@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_fused_head_equals_full_logits(request, model_fixture, num_items):
    model = _tiny_lora(request.getfixturevalue(model_fixture))
    batch = _batch(model.config.vocab_size)
    full_loss, full_grads, _, trained = _loss_and_grads(model, batch, None, num_items)

    lm_head = find_lm_head(model)
    assert fused_head_matches(model, lm_head, model.config.vocab_size, "cpu")
    head = TrainedPositionsHead(lm_head, fused=True)
    fused_loss, fused_grads, outputs, fused_trained = _loss_and_grads(model, batch, head, num_items)
    head.remove()

    assert trained == fused_trained == 37  # (12 + 10) + 15 trained next tokens
    assert outputs.logits.dim() == 0  # the model returned the summed loss, never a logits tensor
    _assert_same((fused_loss, fused_grads), (full_loss, full_grads))
    # The head is back to normal once removed.
    assert model(input_ids=batch["input_ids"][:1, :5]).logits.shape == (1, 5, model.config.vocab_size)


def test_fused_head_chunks_give_the_same_answer(tiny_llama_dir, monkeypatch):
    """Many small chunks (as a large vocabulary gets) add up to the one-chunk result."""
    from tooltune.train import loss as loss_module

    model = _tiny_lora(tiny_llama_dir)
    batch = _batch(model.config.vocab_size)
    head = TrainedPositionsHead(find_lm_head(model), fused=True)
    one_chunk = _loss_and_grads(model, batch, head)[:2]
    monkeypatch.setattr(loss_module, "FUSED_CHUNK_BYTES", 4 * model.config.vocab_size * 5)  # 5 rows per chunk
    many_chunks = _loss_and_grads(model, batch, head)[:2]
    head.remove()
    _assert_same(many_chunks, one_chunk)


def test_fused_head_is_refused_when_the_model_transforms_its_logits():
    """Gemma 2 soft-caps its logits after the head; the fused loss would be capped too, so the check says no."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, final_logit_softcapping=3.0)
    model = Gemma2ForCausalLM(config)
    for param in model.parameters():
        param.requires_grad_(False)
    assert not fused_head_matches(model, find_lm_head(model), config.vocab_size, "cpu")
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 300)  # the head is restored


def test_lean_swiglu_equals_the_stock_mlp(tiny_llama_dir):
    stock = _tiny_lora(tiny_llama_dir, targets=("q_proj", "v_proj", "down_proj"))
    lean = _tiny_lora(tiny_llama_dir, targets=("q_proj", "v_proj", "down_proj"))
    batch = _batch(stock.config.vocab_size)
    expected = _loss_and_grads(stock, batch)[:2]
    before = activation_bytes_per_token(lean, lean.config.vocab_size)
    assert lean_swiglu(lean) == stock.config.num_hidden_layers
    after = activation_bytes_per_token(lean, lean.config.vocab_size)
    _assert_same(_loss_and_grads(lean, batch)[:2], expected)
    # One intermediate-sized tensor per block is no longer kept.
    assert before - after >= 4 * stock.config.intermediate_size * 0.99


def test_partial_checkpointing_equals_none_and_all(tiny_llama_dir):
    plain = _tiny_lora(tiny_llama_dir)
    batch = _batch(plain.config.vocab_size)
    expected = _loss_and_grads(plain, batch)[:2]

    model = _tiny_lora(tiny_llama_dir, checkpointing=True)
    layers = checkpointed_layers(model)
    assert len(layers) == 2 and all(layer.gradient_checkpointing for layer in layers)
    assert plan_checkpointing(model, "1", model.config.vocab_size, fused_head=True) == (1, 2)
    assert [layer.gradient_checkpointing for layer in layers] == [True, False]  # the last block keeps its activations
    _assert_same(_loss_and_grads(model, batch)[:2], expected)
    assert plan_checkpointing(model, "all", model.config.vocab_size, fused_head=True) == (2, 2)
    _assert_same(_loss_and_grads(model, batch)[:2], expected)


def test_auto_checkpointing_spends_only_the_fused_heads_saving(tiny_llama_dir):
    model = _tiny_lora(tiny_llama_dir, checkpointing=True)
    vocab = model.config.vocab_size
    # Without the fused head there is nothing to spend: every block stays checkpointed.
    assert plan_checkpointing(model, "auto", vocab, fused_head=False) == (2, 2)
    # A tiny model's blocks keep far less than a stock head's 12 × vocab bytes per token: none is recomputed.
    per_layer = activation_bytes_per_token(model, vocab)
    assert 0 < per_layer < 12 * vocab
    assert plan_checkpointing(model, "auto", vocab, fused_head=True) == (0, 2)
    with pytest.raises(TrainConfigError, match="auto, all or a number"):
        plan_checkpointing(model, "most", vocab, fused_head=True)
    with pytest.raises(TrainConfigError, match="has 2 decoder layers"):
        plan_checkpointing(model, "3", vocab, fused_head=True)


def test_auto_checkpointing_keeps_blocks_a_large_model_cannot_afford(tiny_llama_dir, monkeypatch):
    """With blocks as heavy as a real model's relative to the vocabulary, auto checkpoints the early ones."""
    from tooltune.train import activations

    model = _tiny_lora(tiny_llama_dir, checkpointing=True)
    vocab = model.config.vocab_size
    # Blocks keeping 5 × vocab bytes per token: two thirds of 12 × vocab pays for one block, not two.
    monkeypatch.setattr(activations, "activation_bytes_per_token", lambda m, v: 5.0 * v)
    assert plan_checkpointing(model, "auto", vocab, fused_head=True) == (1, 2)
    assert [layer.gradient_checkpointing for layer in checkpointed_layers(model)] == [True, False]


def test_fused_head_in_bf16_matches_the_full_head(tiny_llama_dir):
    """GPU runs train in bf16: the fused head upcasts each chunk's logits to fp32 like the stock loss does, and hands
    back a bf16 gradient."""
    model = _tiny_lora(tiny_llama_dir).to(torch.bfloat16)
    batch = _batch(model.config.vocab_size)
    full_loss, full_grads = _loss_and_grads(model, batch)[:2]
    head = TrainedPositionsHead(find_lm_head(model), fused=True)
    fused_loss, fused_grads = _loss_and_grads(model, batch, head)[:2]
    head.remove()
    torch.testing.assert_close(fused_loss, full_loss, rtol=1e-2, atol=1e-2)
    for fused, full in zip(fused_grads, full_grads, strict=True):
        assert fused.dtype == torch.bfloat16
        torch.testing.assert_close(fused.float(), full.float(), rtol=5e-2, atol=2e-3)
