"""Data arguments with LLaMA-Factory's key names, so the seed's flags (``--dataset``, ``--dataset_dir``,
``--template``, ``--cutoff_len`` ...) work unchanged in every command that reads a dataset.

Commands combine these dataclasses with their own in ``tooltune.cli.lf_command(app, verb, (DataArguments, ...), ...)``;
keys that belong to training (learning rate, epochs ...) live with the training arguments, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

BUNDLED_DATA_DIR = Path(__file__).resolve().parent.parent / "resources" / "data"


@dataclass
class DataArguments:
    """Dataset, template and cutoff options (LLaMA-Factory key names)."""

    dataset: str | None = field(
        default=None,
        metadata={"help": "Comma-separated dataset names from dataset_info.json, or paths to .json/.jsonl files."},
    )
    dataset_dir: str = field(
        default=str(BUNDLED_DATA_DIR),
        metadata={"help": "Folder holding dataset_info.json and the data files (default: the bundled demo data)."},
    )
    template: str = field(
        default="qwen",
        metadata={"help": "Prompt template: qwen (LLaMA-Factory's layout), jinja (the tokenizer's chat template) "
                          "or a family's (qwen3, qwen3-instruct-2507, mistral, phi4-mini, smollm3, gemma3; "
                          "docs/families.md)."},
    )
    thinking: Literal["keep", "empty", "off"] = field(
        default="keep",
        metadata={"help": "Reasoning families (Qwen3, SmolLM3): keep trains <think> as the data has it; empty trains "
                          "an empty think block; off renders with thinking disabled (the empty block is prompt)."},
    )
    tool_view: Literal["as_given", "ollama"] = field(
        default="as_given",
        metadata={"help": "as_given: tools as the data has them (HF, vLLM, tooltune serve); ollama: sorted keys and "
                          "only Ollama's schema fields, so Ollama's prompt equals the training text byte for byte."},
    )
    cutoff_len: int = field(default=2048, metadata={"help": "Maximum tokens per sample."})
    cutoff_policy: Literal["safe", "lf"] = field(
        default="safe",
        metadata={
            "help": "safe: drop whole trailing turns (never trains on a cut tool call); "
            "lf: LLaMA-Factory's infer_seqlen truncation (bit-compatible)."
        },
    )
    max_samples: int | None = field(default=None, metadata={"help": "Keep only the first N records of each dataset."})
    val_size: float = field(
        default=0.0, metadata={"help": "Validation split: a fraction in (0, 1) or a record count (>= 1)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the train/validation split."})
    train_on_prompt: bool = field(default=False, metadata={"help": "Also train on prompt tokens."})
    mask_history: bool = field(default=False, metadata={"help": "Train on the last assistant turn only."})
    default_system: str | None = field(
        default=None, metadata={"help": "System prompt used when a conversation has none (overrides the template's)."}
    )
    packing: bool = field(
        default=False,
        metadata={"help": "Pack samples into cutoff_len blocks; each sample attends to itself only, with its own "
                          "positions (LLaMA-Factory's neat_packing)."},
    )
    share_prefix: bool = field(
        default=False,
        metadata={"help": "Rows of samples whose prompts start alike (system prompt + tool schemas) hold that start "
                          "once; each sample attends to it and to itself only — the same loss and gradients, fewer "
                          "tokens computed (docs/train.md)."},
    )
    share_prefix_samples: int = field(
        default=0,
        metadata={"help": "With share_prefix: at most N samples to a row (0: as many as fit). Each row is one "
                          "optimizer step, so smaller rows give samples that share a prompt more steps."},
    )
    share_prefix_trained_tokens: int = field(
        default=0,
        metadata={"help": "With share_prefix: at most N trained tokens to a row (0: no limit), so steps are spread "
                          "by what samples have to learn: cheap single calls get more steps, two-call samples keep "
                          "theirs (a sample over N sits alone)."},
    )
    strict: bool = field(default=False, metadata={"help": "Make any rejected record an error."})

    def dataset_names(self) -> list[str]:
        return [name.strip() for name in (self.dataset or "").split(",") if name.strip()]


@dataclass
class ModelPathArguments:
    """Where the tokenizer comes from (commands that load a model define their own model arguments)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "HF model/tokenizer folder or a .gguf file (default: the embedded SmolLM2 GGUF)."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow tokenizer code shipped with the model."})
