"""Prove an adapter GGUF gives the merged model's answers: logits of base GGUF + LoRA GGUF through llama.cpp against
the merged GGUF on a few rendered conversations, max difference reported (like export's merged-vs-adapter check)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tooltune.errors import TooltuneError

CHECK_CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "system", "content": "You call tools when they help."},
     {"role": "user", "content": "What's the weather in Paris today?"}],
    [{"role": "user", "content": "新增时讯消息：明天中午12点公司放假！"},
     {"role": "assistant", "content": "好的，已为您新增。"}],
    [{"role": "user", "content": "Write one sentence about rivers, then count to 12345."}],
]
MAX_TOKENS = 256
# Both sides store weights in 16 bits and llama.cpp keeps its KV cache in f16, so agreement is at f16 precision of
# the logits' magnitude (the merged side rounds W + s·B·A once, the adapter side adds s·B·A at f32 at run time).
RELATIVE_TOLERANCE = 1e-2


class AdapterCheckError(TooltuneError):
    pass


@dataclass(frozen=True)
class AdapterCheck:
    max_abs_diff: float
    logit_scale: float
    tolerance: float
    n_prompts: int
    n_tokens: int
    top1_agreement: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def summary(self) -> str:
        verdict = "OK" if self.passed else "FAILED"
        return (f"base+adapter vs merged: max abs logit diff {self.max_abs_diff:.2e} (tolerance {self.tolerance:.1e}, "
                f"logit scale {self.logit_scale:.1f}) · top-1 agree {self.top1_agreement:.1%} · {self.n_prompts} "
                f"prompts, {self.n_tokens} tokens · {verdict}")


def prompt_texts(gguf_path: Path) -> list[str]:
    """The check conversations rendered with the model's own chat template (plain text when it has none)."""
    from tooltune.chat_template import ChatTemplateError, render
    from tooltune.serve.modelfile import read_gguf_chat_info

    template, _ = read_gguf_chat_info(gguf_path)
    texts = []
    for messages in CHECK_CONVERSATIONS:
        try:
            texts.append(render(template, messages) if template else "")
        except ChatTemplateError:
            texts.append("")
        if not texts[-1]:
            texts[-1] = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return texts


def _load(model: Path, lora: Path | None, n_ctx: int, threads: int | None) -> Any:
    from llama_cpp import Llama

    kwargs: dict[str, Any] = {"lora_path": str(lora)} if lora is not None else {}
    return Llama(model_path=str(model), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, verbose=False,
                 n_threads=threads, **kwargs)


def _logits(llm: Any, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def check_adapter_logits(base_gguf: str | Path, adapter_gguf: str | Path, merged_gguf: str | Path,
                         tolerance: float | None = None, threads: int | None = None) -> AdapterCheck:
    """Logits of ``base_gguf`` with ``adapter_gguf`` applied vs ``merged_gguf`` on the check conversations."""
    from tooltune.gguf.adapter import check_adapter_gguf

    base_gguf, adapter_gguf, merged_gguf = Path(base_gguf), Path(adapter_gguf), Path(merged_gguf)
    check_adapter_gguf(adapter_gguf, base_gguf)
    if not merged_gguf.is_file():
        raise AdapterCheckError(f"{merged_gguf}: merged GGUF not found")
    n_ctx = MAX_TOKENS
    with_adapter = _load(base_gguf, adapter_gguf, n_ctx, threads)
    merged = _load(merged_gguf, None, n_ctx, threads)
    try:
        diffs, scales, agree, total = [], [], 0, 0
        for text in prompt_texts(base_gguf):
            ids = with_adapter.tokenize(text.encode(), add_bos=True, special=True)[:MAX_TOKENS]
            if ids != merged.tokenize(text.encode(), add_bos=True, special=True)[:MAX_TOKENS]:
                raise AdapterCheckError(f"{merged_gguf} tokenizes differently from {base_gguf}: not the same model")
            ours, reference = _logits(with_adapter, ids), _logits(merged, ids)
            diffs.append(float(np.abs(ours - reference).max()))
            scales.append(float(np.abs(reference).max()))
            agree += int((ours.argmax(-1) == reference.argmax(-1)).sum())
            total += len(ids)
    finally:
        with_adapter.close()
        merged.close()
    scale = max(scales)
    limit = tolerance if tolerance is not None else RELATIVE_TOLERANCE * max(1.0, scale)
    return AdapterCheck(max(diffs), scale, limit, len(diffs), total, agree / total)
