"""The two eval stages: base vs tuned after export, then each quantized file, on the same held-out cases.

Every model is scored on the prompt layout training used: the bundled Jinja equivalent of the training template
(``qwen``) is given to every target, so the base model sees the tools exactly as the tuned one does (SmolLM2's own
chat template has no tools, and scoring it without them would make any "improvement" meaningless).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from tooltune.pipeline.config import PipelineConfig
from tooltune.pipeline.runner import StageContext, StageOutput

# What the report's headline table shows, over the cases whose reference answer is a tool call.
HEADLINE = ("format_valid", "right_name", "args_match")


def eval_chat_template(config: PipelineConfig) -> str | None:
    """The training template's bundled Jinja (a name the eval targets resolve), or None for the model's own."""
    from tooltune.families.registry import named_templates

    name = config.data.template
    return name if name in named_templates() else None


def eval_cases(config: PipelineConfig) -> list[Any]:
    from tooltune.eval import load_cases
    from tooltune.eval.cases import given_tool

    p = config.pipeline
    # The held-out prompts offer the tools as training's template was given them: LLaMA-Factory's qwen layout as the
    # data has them; a Jinja template (a family's, the tokenizer's own) as clients send them — the seed's list of
    # parameters then becomes an OpenAI schema in both.
    from tooltune.templates.jinja import offered_tool

    template = config.data.template
    tool_view = given_tool if template == "qwen" else partial(offered_tool, template_name=template)
    if p.eval_dataset:
        return load_cases(
            p.eval_dataset,
            dataset_dir=config.data.dataset_dir,
            categories=p.eval_categories or None,
            max_cases=p.eval_max_cases,
            tool_view=tool_view,
        )
    return load_cases(config.data, split="val", categories=p.eval_categories or None, max_cases=p.eval_max_cases,
                      tool_view=tool_view)


def base_target(ctx: StageContext) -> Path:
    """The base model in the same engine as the tuned one: its GGUF (the embedded default is one already), a fresh
    F16 GGUF of an HF base for ``eval_engine: gguf``, or the HF directory itself for ``eval_engine: hf``."""
    from tooltune.pipeline.stages import base_model_dir, base_model_source

    config: PipelineConfig = ctx.config
    source = base_model_source(config)
    if source.suffix == ".gguf":
        return source
    if config.pipeline.eval_engine == "hf":
        return base_model_dir(config)
    from tooltune.gguf.convert import convert_to_gguf

    out = ctx.work_dir / f"base-{config.pipeline.gguf_outtype.lower()}.gguf"
    if not out.is_file():
        convert_to_gguf(base_model_dir(config), out, config.pipeline.gguf_outtype.lower())
    return out


def headline_row(label: str, run: Any) -> dict[str, Any]:
    """Counts over the call turns: a well-formed call, the right function, the right arguments (BFCL AST)."""
    call_scores = [s for s in run.scores if s.expected_calls]
    row: dict[str, Any] = {
        "model": label,
        "target": run.target,
        "cases": len(call_scores),
        "format_valid": sum(1 for s in call_scores if s.calls and not s.errors),
        "right_name": sum(1 for s in call_scores if s.outcomes.get("name")),
        "args_match": sum(1 for s in call_scores if s.outcomes.get("arguments_ast")),
        "all_cases": len(run.scores),
        "accuracy": sum(1 for s in run.scores if s.outcomes.get("accuracy")),
        "tokens_per_second": run.summary.tokens_per_second,
        "seconds": run.seconds,
    }
    return row


def sample_conversation(label: str, run: Any, cases: list[Any]) -> dict[str, Any] | None:
    """The first held-out call the model got right, for the report's sample conversation."""
    by_id = {case.id: case for case in cases}
    for score in run.scores:
        if score.expected_calls and score.outcomes.get("arguments_ast") and score.calls:
            case = by_id[score.case_id]
            messages = [
                {"role": m.get("role"), "content": m.get("content") or m.get("tool_calls")} for m in case.messages
            ]
            return {
                "model": label,
                "case": score.case_id,
                "tools": [t.get("function", t).get("name") for t in case.tools],
                "messages": messages[-4:],
                "output": score.output,
                "tool_calls": score.calls,
                "expected": score.expected_calls,
            }
    return None


def evaluate_stage(ctx: StageContext, quants: bool) -> StageOutput:
    from tooltune.eval import evaluate

    config: PipelineConfig = ctx.config
    cases = eval_cases(config)
    labelled: list[tuple[str, Path]] = []
    if quants:
        for qtype in config.pipeline.quantize:
            labelled.append((f"tuned {qtype}", ctx.upstream_output("quantize", qtype)))
    else:
        if config.pipeline.eval_base:
            labelled.append(("base", base_target(ctx)))
        if config.pipeline.eval_engine == "hf":
            labelled.append(("tuned (HF)", ctx.upstream_output("export", "model")))
        else:
            labelled.append((f"tuned {config.pipeline.gguf_outtype.lower()}", ctx.upstream_output("gguf", "gguf")))
    report = evaluate(
        [str(path) for _, path in labelled],
        cases,
        ctx.work_dir,
        max_tokens=config.pipeline.eval_max_new_tokens,
        chat_template=eval_chat_template(config),
        constrain_calls=config.pipeline.eval_constrain_calls,
        console=ctx.console,
    )
    rows = [headline_row(label, run) for (label, _), run in zip(labelled, report.runs, strict=True)]
    metrics: dict[str, Any] = {"rows": rows, "table": report.table_markdown(), "cases": len(cases),
                               "constrained_calls": config.pipeline.eval_constrain_calls,
                               "cut_short": report.cut_short_markdown()}
    tuned_runs = [(label, run) for (label, _), run in zip(labelled, report.runs, strict=True) if label != "base"]
    for label, run in tuned_runs:
        sample = sample_conversation(label, run, cases)
        if sample:
            metrics["sample"] = sample
            break
    summary = "; ".join(
        f"{row['model']}: {row['format_valid']}/{row['cases']} well-formed, {row['right_name']}/{row['cases']} right "
        f"function" + (f", {cut} cut at max_tokens" if (cut := len(run.cut_short)) else "")
        for row, run in zip(rows, report.runs, strict=True)
    )
    return StageOutput({"report": ctx.work_dir / "report.json"}, summary=summary, metrics=metrics)
