"""``tooltune preview``: what training will see — the seed's debug print, a coloured view, and dataset statistics.

The seed has users patch LLaMA-Factory's ``trainer.py`` to print ids, decoded text and labels of the first samples;
``--format seed`` prints those three lines unchanged, and the default view decodes each sample with the trained
spans highlighted, per-sample counts and cutoff marks, then a dataset summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tooltune.data.args import DataArguments, ModelPathArguments
from tooltune.data.prepare import PreparedDataset, check_stage, summary_line
from tooltune.data.preprocess import prepare_with_progress
from tooltune.data.tokenizer import load_tokenizer
from tooltune.encode import IGNORE_INDEX, Encoded

SEED_INPUT_TOKENS = 100  # the seed prints the first 100 input ids


@dataclass
class PreviewArguments:
    """Preview options (plus --stage/--do_train, accepted so the seed's command runs unchanged)."""

    format: Literal["rich", "seed"] = field(
        default="rich", metadata={"help": "rich: highlighted view and statistics; seed: the seed's three lines."}
    )
    num_samples: int = field(default=10, metadata={"help": "How many samples to show (the seed shows 10)."})
    stage: str = field(default="sft", metadata={"help": "Accepted for LLaMA-Factory compatibility (only sft)."})
    do_train: bool = field(default=False, metadata={"help": "Accepted for LLaMA-Factory compatibility; ignored."})


def seed_lines(sample: Encoded, number: int, tokenizer: Any) -> str:
    """The seed's three lines for one sample (``number`` is 1-based like the seed's ``样本 1``)."""
    decoded = tokenizer.decode(sample.input_ids, skip_special_tokens=False)
    return (
        f"\nSample {number}:\n"
        f"Input tokens: {sample.input_ids[:SEED_INPUT_TOKENS]}\n"
        f"Decoded text: {decoded}\n"
        f"Labels: {sample.labels}"
    )


def label_runs(sample: Encoded) -> list[tuple[list[int], bool]]:
    """Consecutive token ids that are all trained or all prompt, in order: (ids, trained)."""
    runs: list[tuple[list[int], bool]] = []
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        is_trained = label != IGNORE_INDEX
        if not runs or runs[-1][1] != is_trained:
            runs.append(([], is_trained))
        runs[-1][0].append(token)
    return runs


def highlighted(sample: Encoded, tokenizer: Any) -> Text:
    """Decoded text with trained runs in bold green on a dark background and prompt runs dimmed."""
    text = Text()
    for ids, trained in label_runs(sample):
        style = "bold green on grey15" if trained else "grey62"
        text.append(tokenizer.decode(ids, skip_special_tokens=False), style=style)
    return text


def sample_header(sample: Encoded, number: int, policy: str) -> str:
    parts = [
        f"sample {number}",
        sample.where(),
        f"{len(sample.input_ids)} tokens",
        f"{sample.trained_tokens} trained",
        f"{sample.kept_turns}/{sample.turns} turns",
    ]
    if sample.truncated:
        if policy == "lf":
            parts.append(f"✂ cut from {sample.full_length} tokens")
        else:
            parts.append(
                f"✂ {sample.turns - sample.kept_turns} trailing turns dropped (of {sample.full_length} tokens)"
            )
    return " · ".join(parts)


def summary_table(prepared: PreparedDataset) -> Table:
    report = prepared.train
    load = prepared.load
    table = Table(title="dataset", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for count in load.datasets:
        table.add_row(count.name, f"{count.kept} kept, {count.rejected} rejected  ({count.path})")
    table.add_row("template", f"{prepared.template.name}, cutoff_len {report.cutoff_len}, policy {report.policy}")
    table.add_row("samples", f"{len(report.samples)} ({len(report.skipped)} skipped)")
    if prepared.val is not None:
        table.add_row("validation", f"{len(prepared.val.samples)} samples held out")
    table.add_row("tokens", f"{report.tokens} ({report.trained_tokens} trained)")
    pct = report.length_percentiles()
    table.add_row("length", f"p50 {pct[50]}  p90 {pct[90]}  p99 {pct[99]}  max {pct[100]}")
    table.add_row("hit cutoff", f"{report.truncated}")
    if report.blocks is not None and report.shared_prefixes:
        table.add_row("shared", report.sharing_summary())
    elif report.blocks is not None:
        table.add_row("packed", f"{len(report.blocks)} blocks of ≤ {report.cutoff_len} tokens")
    return table


def template_warnings(template: Any) -> list[str]:
    """What the chat template being trained loses from a tool conversation (tools ignored, calls or the system prompt
    dropped), with the corrected template to use instead; empty for the ``qwen`` layout and sound templates."""
    from tooltune.families.problems import template_problems

    source = getattr(template, "source", None)
    if not isinstance(source, str):
        return []
    found = template_problems(source, getattr(template, "bos_token", ""), getattr(template, "eos_token", ""))
    family = getattr(template, "family", None)
    hint = (f"; --template {family.name} is tooltune's corrected template" if family is not None
            and family.shipped_template and family.template_text() != source else "")
    return [f"template {template.name}: the chat template {problem}{hint}" for problem in found]


def run_preview(
    data_args: DataArguments,
    model_args: ModelPathArguments,
    preview_args: PreviewArguments,
    console: Console | None = None,
) -> PreparedDataset:
    console = console or Console()
    check_stage(preview_args.stage)
    tokenizer = load_tokenizer(model_args.model_name_or_path, model_args.trust_remote_code)
    prepared = prepare_with_progress(data_args, tokenizer, Console(stderr=True))
    samples = prepared.train.samples[: max(preview_args.num_samples, 0)]
    if preview_args.format == "seed":
        for number, sample in enumerate(samples, start=1):
            # Plain print: rich markup would eat "[...]" in the id lists.
            console.out(seed_lines(sample, number, tokenizer), highlight=False)
    else:
        for number, sample in enumerate(samples, start=1):
            console.rule(sample_header(sample, number, prepared.train.policy), style="cyan")
            text = highlighted(sample, tokenizer)
            if sample.truncated:
                text.append("✂ cutoff", style="bold red")
            console.print(text)
        console.print(summary_table(prepared))
        for warning in template_warnings(prepared.template):
            console.print(Text(f"warning: {warning}", style="bold yellow"))
        for rejection in prepared.load.rejected[:20]:
            console.print(Text(f"rejected {rejection}", style="yellow"))
        for skipped in prepared.train.skipped[:20]:
            console.print(Text(f"skipped {skipped}", style="yellow"))
        hidden = max(len(prepared.load.rejected) - 20, 0) + max(len(prepared.train.skipped) - 20, 0)
        if hidden:
            console.print(Text(f"... and {hidden} more (tooltune preprocess --out lists every sample)", style="yellow"))
    console.out(summary_line(prepared), highlight=False)
    return prepared
