"""The trained-positions LM head gives the same loss and gradients as the full-logits computation; batching pads only
to the longest sample; the length-grouped order is deterministic and reduces padding; precision is never silently
changed."""

from __future__ import annotations

import pytest
import torch

from tooltune.train.args import FinetuningArguments, ModelArguments, TrainArguments, TrainConfigError
from tooltune.train.batching import EncodedDataset, LengthGroupedSampler, PadToLongestCollator, padding_waste
from tooltune.train.loss import (
    TrainedPositionsHead,
    causal_lm_loss,
    decision_token_weights,
    find_lm_head,
    next_token_targets,
)


class Sample:
    def __init__(self, input_ids, labels):
        self.input_ids, self.labels = input_ids, labels


def _tiny_lora(model_dir, targets=("q_proj", "v_proj"), kernel=None):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    kwargs = {"attn_implementation": kernel} if kernel else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True, **kwargs)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))
    with torch.no_grad():  # a fresh adapter has B = 0; make it non-zero so gradients reach both A and B
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return peft_model


def _batch(vocab: int, shapes=((23, [(8, 14), (18, 23)]), (15, [(10, 15)]), (9, [])), seed: int = 1,
           ) -> dict[str, torch.Tensor]:
    """Random samples of the given (length, trained spans), right-padded by the training collator."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for length, trained in shapes:
        ids = torch.randint(5, vocab, (length,), generator=g).tolist()
        labels = [-100] * length
        for start, end in trained:
            labels[start:end] = ids[start:end]
        samples.append(Sample(ids, labels))
    dataset = EncodedDataset(samples)
    return PadToLongestCollator(pad_token_id=0)([dataset[i] for i in range(len(dataset))])


@pytest.mark.parametrize("num_items", [None, 40])
def test_trained_positions_loss_equals_full_loss(tiny_llama_dir, num_items):
    model = _tiny_lora(tiny_llama_dir)
    batch = _batch(model.config.vocab_size)

    full_loss, _, trained = causal_lm_loss(model, batch, None, num_items)
    full_grads = torch.autograd.grad(full_loss, [p for p in model.parameters() if p.requires_grad])

    # transformers' own loss (mean over trained next tokens) agrees with the reference path.
    reference = model(**batch).loss
    if num_items is None:
        torch.testing.assert_close(full_loss, reference, rtol=1e-5, atol=1e-6)

    head = TrainedPositionsHead(find_lm_head(model))
    fast_loss, outputs, fast_trained = causal_lm_loss(model, batch, head, num_items)
    fast_grads = torch.autograd.grad(fast_loss, [p for p in model.parameters() if p.requires_grad])
    head.remove()

    assert trained == fast_trained == 16  # (6 + 5) + 5, shifted by one position
    assert outputs.logits.shape == (16, model.config.vocab_size)  # the head ran on trained positions only
    torch.testing.assert_close(fast_loss, full_loss, rtol=1e-5, atol=1e-6)
    for fast, full in zip(fast_grads, full_grads, strict=True):
        torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-7)


def test_decision_weights_mark_the_trained_token_after_each_whole_marker():
    marker = [7, 8]
    labels = torch.tensor([
        [-100, -100, 5, 7, 8, 6, 7, 8, 9, 7],  # two markers, each followed by a trained token; a lone 7 at the end
        [-100, -100, 7, 8, -100, 8, 7, 8, 2, -100],  # a marker before the prompt resumes; one before the reply's end
    ])
    weights = decision_token_weights(labels, marker, 3.0)
    mask, targets = next_token_targets(labels)
    assert targets.tolist() == [5, 7, 8, 6, 7, 8, 9, 7, 7, 8, 8, 7, 8, 2]
    assert weights.tolist() == [1, 1, 1, 3, 1, 1, 3, 1, 1, 1, 1, 1, 1, 3]
    assert decision_token_weights(labels, marker, 1.0).tolist() == [1.0] * 14


@pytest.mark.parametrize("path", ["full", "trained", "fused"])
def test_decision_weight_scales_those_tokens_loss_and_gradient_on_every_head_path(tiny_llama_dir, path):
    """The weighted loss is the plain per-token cross-entropy with the decision tokens counted ``w`` times, divided
    by the same trained-token count, and every head path (full logits, trained positions, fused) gives it and its
    gradient alike."""
    import torch.nn.functional as F

    model = _tiny_lora(tiny_llama_dir)
    batch = _batch(model.config.vocab_size)
    marker = [3, 4]  # ids below 5 never occur in the random batch: plant the marker where it should count
    for row, at in ((0, 9), (0, 19), (1, 11)):
        batch["input_ids"][row, at:at + 2] = torch.tensor(marker)
        batch["labels"][row, at:at + 2] = torch.tensor(marker)
    params = [p for p in model.parameters() if p.requires_grad]
    mask, targets = next_token_targets(batch["labels"])
    weights = decision_token_weights(batch["labels"], marker, 4.0)
    assert int((weights == 4.0).sum()) == 3

    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    per_token = F.cross_entropy(logits[mask].float(), targets, reduction="none")
    expected = (per_token * weights).sum() / 16
    expected_grads = torch.autograd.grad(expected, params)
    head = None if path == "full" else TrainedPositionsHead(find_lm_head(model), fused=path == "fused")
    loss, _, trained = causal_lm_loss(model, batch, head, None, decision=(marker, 4.0))
    grads = torch.autograd.grad(loss, params)
    if head is not None:
        head.remove()
    assert trained == 16
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert float(loss.detach()) > float(per_token.mean().detach())  # the weighted tokens count more
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    # weight 1 is plain SFT on every path
    plain, _, _ = causal_lm_loss(model, batch, None, None, decision=(marker, 1.0))
    torch.testing.assert_close(plain, per_token.mean(), rtol=1e-5, atol=1e-6)


def test_head_hook_is_inactive_outside_loss(tiny_llama_dir):
    model = _tiny_lora(tiny_llama_dir)
    head = TrainedPositionsHead(find_lm_head(model))
    ids = torch.tensor([[5, 6, 7, 8]])
    assert model(input_ids=ids).logits.shape == (1, 4, model.config.vocab_size)  # generation sees every position
    head.remove()


def test_collator_pads_to_longest_in_batch_only():
    features = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [-100, 5]}]
    batch = PadToLongestCollator(pad_token_id=9)(features)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 9]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 5, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_length_grouped_sampler_is_deterministic_and_cuts_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(100, 1000, (300,), generator=g).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=2, seed=42)
    first = list(sampler)
    assert sorted(first) == list(range(300))  # a permutation: nothing dropped or repeated
    assert list(LengthGroupedSampler(lengths, batch_size=2, seed=42)) == first  # depends on (seed, epoch) only
    sampler.set_epoch(1)
    assert list(sampler) != first
    random_order = torch.randperm(300, generator=torch.Generator().manual_seed(42)).tolist()
    assert padding_waste(lengths, first, 2) < padding_waste(lengths, random_order, 2) / 5


def test_bf16_without_hardware_support_fails_clearly(monkeypatch):
    from tooltune.train import device

    monkeypatch.setattr(device, "bf16_supported", lambda use_cpu=False: False)
    with pytest.raises(TrainConfigError, match="--bf16: .*no .*bf16.*Drop --bf16 to train in fp32"):
        device.resolve_precision(TrainArguments(bf16=True))


def test_this_machine_bf16_answer_is_honest():
    """On a CPU without AVX512-BF16/AMX (this CI machine) --bf16 is refused; on a bf16 machine it is accepted."""
    from tooltune.train import device

    if device.bf16_supported():
        assert device.resolve_precision(TrainArguments(bf16=True)).load_dtype == torch.bfloat16
    else:
        with pytest.raises(TrainConfigError, match="--bf16"):
            device.resolve_precision(TrainArguments(bf16=True))


@pytest.fixture
def cudnn_attention_restored():
    enabled = torch.backends.cuda.cudnn_sdp_enabled()
    yield
    torch.backends.cuda.enable_cudnn_sdp(enabled)


def test_half_precision_cuda_training_turns_cudnn_attention_off(monkeypatch, cudnn_attention_restored):
    """cuDNN attention rebuilds a plan for every padded length (2.1-2.6x slower bf16 training on an H200): a bf16 or
    fp16 run on CUDA turns it off, an fp32 or CPU run leaves it, and TOOLTUNE_CUDNN_ATTENTION=1 keeps it."""
    from tooltune.train.device import KEEP_CUDNN_ATTENTION_ENV, Precision, avoid_cudnn_attention

    monkeypatch.delenv(KEEP_CUDNN_ATTENTION_ENV, raising=False)
    bf16_cuda = Precision("cuda", "cuda (test)", torch.bfloat16, bf16=True, fp16=False)
    for untouched in (Precision("cuda", "cuda (test)", torch.float32, bf16=False, fp16=False),
                      Precision("cpu", "cpu (test)", torch.bfloat16, bf16=True, fp16=False)):
        torch.backends.cuda.enable_cudnn_sdp(True)
        assert not avoid_cudnn_attention(untouched)
        assert torch.backends.cuda.cudnn_sdp_enabled()
    monkeypatch.setenv(KEEP_CUDNN_ATTENTION_ENV, "1")
    assert not avoid_cudnn_attention(bf16_cuda)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    monkeypatch.delenv(KEEP_CUDNN_ATTENTION_ENV)
    for half in (bf16_cuda, Precision("cuda", "cuda (test)", torch.float16, bf16=False, fp16=True)):
        torch.backends.cuda.enable_cudnn_sdp(True)
        assert avoid_cudnn_attention(half)
        assert not torch.backends.cuda.cudnn_sdp_enabled()


def test_cpu_default_is_fp32_and_fp16_needs_cuda():
    from tooltune.train import device

    if torch.cuda.is_available():
        pytest.skip("CUDA machine")
    assert device.resolve_precision(TrainArguments()).load_dtype == torch.float32
    with pytest.raises(TrainConfigError, match="--fp16"):
        device.resolve_precision(TrainArguments(fp16=True))


def test_lora_targets_all_and_unknown(tiny_qwen2_dir):
    from transformers import AutoModelForCausalLM

    from tooltune.train.model import resolve_lora_targets

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, use_safetensors=True)
    assert resolve_lora_targets(model, ["all"]) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    with pytest.raises(TrainConfigError, match="q_prj.*it has: .*q_proj"):
        resolve_lora_targets(model, ["q_prj"])


def test_attaching_lora_prints_no_library_deprecation_warning(tiny_qwen2_dir):
    """peft reads transformers' deprecated is_gradient_checkpointing when it wraps a model: the FutureWarning went
    into every training and merge log; attach_lora (and the merge) keep it out, and only that one."""
    import warnings

    from transformers import AutoModelForCausalLM

    from tooltune.train.model import attach_lora, peft_quietly

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, use_safetensors=True)
    model.gradient_checkpointing_enable()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attach_lora(model, ModelArguments(), FinetuningArguments(lora_target=["q_proj"]))
        with peft_quietly():
            warnings.warn("something else", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "is_gradient_checkpointing" in m], messages
    assert "something else" in messages


def test_missing_model_dir_is_a_clear_error(tmp_path):
    from tooltune.train.model import ModelLoadError, resolve_model_path

    with pytest.raises(ModelLoadError, match="not a local model directory"):
        resolve_model_path(ModelArguments(model_name_or_path=str(tmp_path / "nope")))


def test_qlora_on_cpu_is_refused_without_importing_bitsandbytes():
    from tooltune.train.device import Precision
    from tooltune.train.model import _quantization_kwargs

    cpu = Precision("cpu", "cpu", torch.float32, bf16=False, fp16=False)
    with pytest.raises(TrainConfigError, match="CUDA"):
        _quantization_kwargs(4, cpu)


def _prompt_heavy_batch(vocab: int) -> dict[str, torch.Tensor]:
    """Two samples of different lengths whose prompts (untrained) are 30 and 24 tokens, right-padded."""
    return _batch(vocab, ((40, [(30, 35), (38, 40)]), (33, [(24, 33)])), seed=2)


def _one_layer_lora(model_dir, targets):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    config.num_hidden_layers = 1
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_config(config), LoraConfig(r=4, target_modules=list(targets)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model.train()


@pytest.mark.parametrize("fused", [False, True])
def test_cached_prompt_gives_the_same_loss_and_the_trained_part_gradient(tiny_llama_dir, fused):
    """One decoder layer with LoRA off the key/value projections: the prompt's keys and values do not depend on any
    trained weight, so the cached-prompt gradient must equal the full one exactly. With k/v trained, the loss is still
    the same and only the k/v adapters' gradients differ (the path through the prompt is what is left out)."""
    exact = ("q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for targets, same_gradient in ((exact, True), (("q_proj", "k_proj", "v_proj"), False)):
        model = _one_layer_lora(tiny_llama_dir, targets)
        batch = _prompt_heavy_batch(model.config.vocab_size)
        params = [p for p in model.parameters() if p.requires_grad]
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        head = TrainedPositionsHead(find_lm_head(model), fused=fused)
        full_loss, _, full_trained = causal_lm_loss(model, batch, head, 20)
        full_grads = torch.autograd.grad(full_loss, params)
        calls: list[int] = []

        def record_length(module, args, kwargs, calls=calls):
            calls.append(kwargs["input_ids"].shape[1])

        hook = model.get_base_model().model.register_forward_pre_hook(record_length, with_kwargs=True)
        cached_loss, _, cached_trained = causal_lm_loss(model, batch, head, 20, cache_prompt=True)
        hook.remove()
        cached_grads = torch.autograd.grad(cached_loss, params)
        head.remove()
        assert calls == [23, 40 - 23]  # the prompt once, without gradients; then the rest of the batch
        assert cached_trained == full_trained == 5 + 2 + 9
        torch.testing.assert_close(cached_loss, full_loss, rtol=1e-5, atol=1e-6)
        for name, cached, full in zip(names, cached_grads, full_grads, strict=True):
            assert torch.isfinite(cached).all() and cached.abs().sum() > 0, name
            if same_gradient or not ("k_proj" in name or "v_proj" in name):
                torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-6, msg=name)
        if not same_gradient:
            assert any(not torch.allclose(c, f, rtol=1e-3, atol=1e-6) for n, c, f
                       in zip(names, cached_grads, full_grads, strict=True) if "v_proj" in n)


def test_cached_prompt_is_off_in_eval_and_for_short_prompts(tiny_llama_dir):
    model = _one_layer_lora(tiny_llama_dir, ("q_proj",))
    batch = _batch(model.config.vocab_size)  # first trained position 7: below MIN_CACHED_PROMPT
    calls = []
    hook = model.get_base_model().model.register_forward_pre_hook(lambda *a: calls.append(1))
    causal_lm_loss(model, batch, None, cache_prompt=True)
    model.eval()
    causal_lm_loss(model, _prompt_heavy_batch(model.config.vocab_size), None, cache_prompt=True)
    hook.remove()
    assert calls == [1, 1]  # one forward each: nothing cut


def _lora_layers_step(model_dir, checkpointing: bool, lora_layers: int | None = 1,
                      ) -> tuple[list[bool], dict[str, torch.Tensor]]:
    """One backward pass of a 2-layer model: whether each layer's output required grad, and the LoRA gradients."""
    from transformers import AutoModelForCausalLM

    from tooltune.train.model import attach_lora, enable_gradient_checkpointing

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    if checkpointing:
        enable_gradient_checkpointing(model)
    peft_model = attach_lora(model, ModelArguments(), FinetuningArguments(lora_target=["all"], lora_layers=lora_layers))
    with torch.no_grad():  # a fresh adapter has B = 0; non-zero B lets gradients reach A too
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    peft_model.train()
    needs_grad: list[bool] = []
    for layer in peft_model.base_model.model.model.layers:
        layer.register_forward_hook(lambda _m, _i, out: needs_grad.append(
            (out[0] if isinstance(out, tuple) else out).requires_grad))
    ids = torch.randint(5, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(3))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    return needs_grad[:2], {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}


def test_lora_layers_adapts_the_last_layers_and_skips_the_backward_below(tiny_qwen2_dir, tmp_path):
    """--lora_layers 1 on a 2-layer model: only the last layer gets LoRA weights, and the first layer's output does
    not require grad — its backward pass is never built — with gradient checkpointing on or off, which give the same
    gradients."""
    from transformers import AutoModelForCausalLM

    from tooltune.train.args import FinetuningArguments
    from tooltune.train.model import attach_lora

    plain_flags, plain = _lora_layers_step(tiny_qwen2_dir, checkpointing=False)
    checkpointed_flags, checkpointed = _lora_layers_step(tiny_qwen2_dir, checkpointing=True)
    assert plain_flags == checkpointed_flags == [False, True]
    assert plain and {n.split(".layers.")[1].split(".")[0] for n in plain} == {"1"}
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7)
    # Every layer adapted: checkpointing still reaches the first layer's LoRA weights with the embeddings' output
    # not requiring grad (the non-reentrant checkpoint does not need it).
    _, plain = _lora_layers_step(tiny_qwen2_dir, checkpointing=False, lora_layers=None)
    _, checkpointed = _lora_layers_step(tiny_qwen2_dir, checkpointing=True, lora_layers=None)
    assert {n.split(".layers.")[1].split(".")[0] for n in plain} == {"0", "1"} and plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7)

    first = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, use_safetensors=True), ModelArguments(),
                        FinetuningArguments(lora_target=["q_proj"], lora_layers=-1))
    assert {n.split(".layers.")[1].split(".")[0] for n, _ in first.named_parameters() if "lora_A" in n} == {"0"}
    adapter = tmp_path / "adapter"
    first.save_pretrained(adapter)
    with pytest.raises(TrainConfigError, match="--lora_layers shapes a new adapter"):
        attach_lora(AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, use_safetensors=True),
                    ModelArguments(adapter_name_or_path=str(adapter)), FinetuningArguments(lora_layers=1))
    for bad in (0, 3, -3):
        with pytest.raises(TrainConfigError, match=f"--lora_layers {bad}: .* 2 decoder layers"):
            attach_lora(AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, use_safetensors=True), ModelArguments(),
                        FinetuningArguments(lora_layers=bad))


def _rows_and_samples(vocab: int, share: bool):
    """Four samples whose first 40 tokens are the same untrained prompt, as rows (``share_prefixes`` or
    ``pack_samples``) and one by one."""
    from tooltune.encode import Encoded, pack_samples, share_prefixes

    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(5, vocab, (40,), generator=g).tolist()
    samples = []
    for n, (own, trained_from) in enumerate(((9, 3), (14, 5), (6, 2), (11, 4))):
        ids = prompt + torch.randint(5, vocab, (own,), generator=g).tolist()
        labels = [-100] * (40 + trained_from) + ids[40 + trained_from :]
        samples.append(Encoded(ids, labels, False, position=n))
    rows = share_prefixes(samples, 64) if share else pack_samples(samples, 160)
    return rows, samples


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("share", [False, True])
def test_rows_of_several_samples_give_each_sample_its_own_loss_and_gradient(tiny_llama_dir, kernel, share):
    """A row that holds several samples (--packing; --share_prefix, which also holds their common prompt once)
    computes exactly what the samples compute one by one: each attends to itself and the shared prefix only. Before
    the 4D mask, packed samples read the ones packed before them (transformers ignores restarted positions when a
    2D attention mask is given)."""
    model = _tiny_lora(tiny_llama_dir, kernel=kernel).train()
    rows, samples = _rows_and_samples(model.config.vocab_size, share)
    assert len(rows) < len(samples)
    if share:
        assert rows[0].shared_prefix == 40  # the common prompt, each sample's own tokens after it
    params = [p for p in model.parameters() if p.requires_grad]
    collate = PadToLongestCollator(pad_token_id=0)
    trained = sum(1 for s in samples for label in s.labels if label != -100)
    for fused in (False, True):
        head = TrainedPositionsHead(find_lm_head(model), fused=fused)
        try:
            alone = [causal_lm_loss(model, collate([EncodedDataset([s])[0]]), head, trained)[0] for s in samples]
            expected_loss = torch.stack(alone).sum()
            expected = torch.autograd.grad(expected_loss, params)
            rows_dataset = EncodedDataset(rows)
            batch = collate([rows_dataset[i] for i in range(len(rows_dataset))])
            assert "segment_ids" in batch and batch["segment_ids"].min() == -1 or len(rows) == 1
            loss, _, counted = causal_lm_loss(model, batch, head, trained)
            got = torch.autograd.grad(loss, params)
        finally:
            head.remove()
        assert counted == trained
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_segment_attention_mask():
    from tooltune.train.loss import segment_attention

    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    allowed = segment_attention(segments, eager=False, dtype=torch.float32)[0, 0]
    assert allowed.dtype == torch.bool
    assert allowed.tolist() == [
        [True, False, False, False, False, False],
        [True, True, False, False, False, False],
        [True, True, True, False, False, False],
        [True, True, True, True, False, False],
        [True, True, False, False, True, False],  # the second sample: the shared prefix and itself, not the first
        [False, False, False, False, False, True],  # padding reads padding only, so no row is empty
    ]
    additive = segment_attention(segments, eager=True, dtype=torch.bfloat16)[0, 0]
    assert additive.dtype == torch.bfloat16
    assert torch.equal(additive == 0, allowed)


def test_collator_adds_segments_only_for_rows_of_several_samples():
    from tooltune.encode import PackedBlock

    collate = PadToLongestCollator(pad_token_id=0)
    single = Sample([5, 6, 7], [-100, 6, 7])
    alone = PackedBlock([5, 6], [-100, 6], [0, 1], [0], [1, 1])
    assert "segment_ids" not in collate([EncodedDataset([single, alone])[i] for i in range(2)])
    packed = PackedBlock([5, 6, 8, 9], [-100, 6, -100, 9], [0, 1, 0, 1], [0, 1], [1, 1, 2, 2])
    batch = collate([EncodedDataset([single, packed])[i] for i in range(2)])
    assert batch["segment_ids"].tolist() == [[1, 1, 1, -1], [1, 1, 2, 2]]
    assert batch["position_ids"].tolist()[1] == [0, 1, 0, 1]
