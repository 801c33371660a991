"""The pipeline's stages: the seed's manual steps, each a typed function over the other modules' public API.

preview → train → export → gguf → eval → quantize → eval_quants → modelfile → report

Each stage writes into ``<run_dir>/<stage>/`` and hands back its outputs and a few JSON figures for the report. Heavy
imports happen inside the stage so ``tooltune run --help`` stays fast and a skipped stage costs nothing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from tooltune.atomic import write_text
from tooltune.errors import TooltuneError
from tooltune.pipeline.config import PipelineConfig, default_serve_name
from tooltune.pipeline.runner import PipelineError, RunReport, Stage, StageContext, StageOutput, run_stages

# ------------------------------------------------------------------------------------------------ shared helpers


def base_model_source(config: PipelineConfig) -> Path:
    """What the user named as the base: an HF directory, a .gguf file, or the embedded default GGUF."""
    if config.model.model_name_or_path:
        return Path(config.model.model_name_or_path)
    from tooltune.default_model import default_gguf_path

    return default_gguf_path()


def base_model_dir(config: PipelineConfig) -> Path:
    """An HF directory for the base model; a GGUF base is imported (dequantized) once into the cache."""
    source = base_model_source(config)
    if source.suffix != ".gguf":
        if not source.is_dir():
            raise PipelineError(f"model_name_or_path {source}: not a model directory or .gguf file")
        return source
    from tooltune.default_model import cache_dir
    from tooltune.gguf import import_gguf

    if not config.model.model_name_or_path:
        return Path(import_gguf.ensure_default_model())
    out_dir = cache_dir() / f"{source.stem}-hf"
    if (out_dir / "config.json").is_file():
        return out_dir  # imported by an earlier run; the stage keys already hash the GGUF itself
    return Path(import_gguf.import_gguf(source, out_dir))


def dataset_files(config: PipelineConfig) -> dict[str, Path]:
    """The files behind ``dataset`` (and ``eval_dataset``), so editing one re-runs the stages that read it."""
    from tooltune.data.registry import resolve_dataset

    files: dict[str, Path] = {}
    names = config.data.dataset_names()
    if config.pipeline.eval_dataset:
        names += [n.strip() for n in config.pipeline.eval_dataset.split(",") if n.strip()]
    for name in names:
        files[f"dataset:{name}"] = Path(resolve_dataset(name, config.data.dataset_dir).path)
    return files


def data_params(config: PipelineConfig) -> dict[str, Any]:
    return dataclasses.asdict(config.data)


def chat_template_for(config: PipelineConfig) -> str | None:
    """The Jinja template equal to the training layout (the design rule: serve renders what training rendered)."""
    from tooltune.merge import named_template_jinja

    return named_template_jinja(config.data.template)


# --------------------------------------------------------------------------------------------------------- stages


def run_preview(ctx: StageContext) -> StageOutput:
    """The seed's debug print (input ids, decoded text, labels) for the first samples, plus counts and every rejected
    or skipped record — the same ``prepare_dataset`` call training makes, so it shows what training will see."""
    from tooltune.data.prepare import prepare_dataset
    from tooltune.data.tokenizer import load_tokenizer
    from tooltune.preview import seed_lines, summary_line, summary_table

    config: PipelineConfig = ctx.config
    tokenizer = load_tokenizer(base_model_dir(config), config.model.trust_remote_code)
    prepared = prepare_dataset(config.data, tokenizer)
    train = prepared.train
    held_out = len(prepared.load.conversations) - len(train.samples) - len(train.skipped)
    lines = [f"# {summary_line(prepared)}; {held_out} conversations held out (val_size {config.data.val_size})"]
    lines += [f"rejected: {rejection}" for rejection in prepared.load.rejected]
    lines += [f"skipped: {skipped}" for skipped in train.skipped]
    for number, sample in enumerate(train.samples[: config.pipeline.preview_samples], start=1):
        lines.append(seed_lines(sample, number, tokenizer))
    out = ctx.work_dir / "preview.txt"
    write_text(out, "\n".join(lines) + "\n")
    ctx.console.print(summary_table(prepared))
    for problem in [*prepared.load.rejected, *train.skipped][:5]:
        ctx.console.print(f"[yellow]left out:[/yellow] {problem}", highlight=False)
    if not train.samples:
        raise PipelineError(f"no training samples left after encoding ({train.summary()}); see {out}")
    metrics = {
        "records": prepared.load.kept,
        "rejected": len(prepared.load.rejected),
        "held_out": held_out,
        "samples": len(train.samples),
        "skipped": len(train.skipped),
        "tokens": train.tokens,
        "trained_tokens": train.trained_tokens,
        "truncated": train.truncated,
        "length_percentiles": train.length_percentiles(),
        "summary_line": summary_line(prepared),
        "sample_text": tokenizer.decode(showcase_sample(train.samples, tokenizer).input_ids, skip_special_tokens=False),
    }
    summary = (
        f"{prepared.load.kept} records ({len(prepared.load.rejected)} rejected, {held_out} held out) → "
        f"{len(train.samples)} samples, {train.tokens:,} tokens ({train.trained_tokens:,} trained), "
        f"{len(train.skipped)} skipped"
    )
    return StageOutput({"preview": out}, summary=summary, metrics=metrics)


def showcase_sample(samples: list[Any], tokenizer: Any) -> Any:
    """The first sample that trains on a tool call (the report's example), else the first sample."""
    for sample in samples[:50]:
        if "<tool_call>" in tokenizer.decode(sample.input_ids, skip_special_tokens=False):
            return sample
    return samples[0]


def run_train(ctx: StageContext) -> StageOutput:
    """LoRA SFT into ``train/``; after an interruption the same stage key resumes from the newest checkpoint."""
    from tooltune.train import train
    from tooltune.train.checkpoints import latest_checkpoint

    config: PipelineConfig = ctx.config
    model = dataclasses.replace(config.model, model_name_or_path=str(base_model_dir(config)))
    checkpoint = latest_checkpoint(ctx.work_dir) if ctx.resume else None
    training = dataclasses.replace(
        config.training,
        output_dir=str(ctx.work_dir),
        overwrite_output_dir=checkpoint is None,
        resume_from_checkpoint=str(checkpoint) if checkpoint else None,
    )
    if checkpoint:
        ctx.console.print(f"resuming training from {checkpoint.name}")
    result = train(model, config.data, config.finetune, training, console=ctx.console)
    if result.adapter_dir is None:
        raise PipelineError("training did not run (do_train is false); the later stages need an adapter")
    metrics = train_metrics(result, ctx.work_dir)
    steps = metrics["loss"][-1][0] if metrics["loss"] else result.plan.total_steps
    loss = result.metrics.get("train_loss")
    summary = f"{steps} steps on {result.plan.samples_label()}" + (f", mean loss {loss:.3f}" if loss else "")
    if checkpoint:
        summary += f", resumed from {checkpoint.name}"
    return StageOutput({"adapter": result.adapter_dir}, summary=summary, metrics=metrics)


def train_metrics(result: Any, train_dir: Path) -> dict[str, Any]:
    from tooltune.train.callbacks import LOG_FILE, read_log

    # The JSONL log survives a resume (cut back to the checkpoint), so the curve covers both attempts.
    history = read_log(train_dir / LOG_FILE)
    loss = [[row["step"], row["loss"]] for row in history if "loss" in row and "step" in row]
    figures = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.metrics.items()}
    metrics: dict[str, Any] = {"plan": result.plan.lines(), "plan_dict": result.plan.to_dict(), "loss": loss}
    metrics["figures"] = figures
    if result.resumed_from:
        metrics["resumed_from"] = Path(result.resumed_from).name
    return metrics


def run_export(ctx: StageContext) -> StageOutput:
    """Merge adapter into base (the seed's ``llamafactory-cli export``), training template in the tokenizer."""
    from tooltune.merge import export_merged

    config: PipelineConfig = ctx.config
    out = ctx.work_dir / "model"
    result = export_merged(
        base_model_dir(config),
        ctx.upstream_output("train", "adapter"),
        out,
        export_size=config.pipeline.export_size,
        export_dtype=config.pipeline.export_dtype,
        template=config.data.template,
        trust_remote_code=config.model.trust_remote_code,
        console=ctx.console,
    )
    metrics = {
        "bytes": result.total_bytes,
        "shards": len(result.shards),
        "dtype": result.dtype,
        "max_abs_diff": result.max_abs_diff,
        "chat_template_source": result.chat_template_source,
        "warnings": result.warnings,
    }
    return StageOutput({"model": out}, summary=result.summary(), metrics=metrics)


def run_gguf(ctx: StageContext) -> StageOutput:
    """HF → GGUF in ``gguf_outtype`` (the seed's ``convert_hf_to_gguf.py --outtype f16``); the merged tokenizer's chat
    template (the training layout) goes into ``tokenizer.chat_template``."""
    from tooltune.gguf.convert import convert

    config: PipelineConfig = ctx.config
    outtype = config.pipeline.gguf_outtype.lower()
    out = ctx.work_dir / f"model-{outtype}.gguf"
    result = convert(ctx.upstream_output("export", "model"), out, outtype, model_name=default_serve_name(config))
    label = f"tuned {outtype}"
    files = [{"name": out.name, "path": str(out), "type": outtype.upper(), "bytes": result.size_bytes, "label": label}]
    metrics = {"files": files, "n_params": result.n_params, "n_tensors": result.n_tensors}
    return StageOutput({"gguf": out}, summary=result.summary(), metrics=metrics)


def run_quantize(ctx: StageContext) -> StageOutput:
    """``llama-quantize`` for each type in ``quantize`` (Q4_K_M by default), then size, perplexity and KL divergence of
    every file against the F16 on the same text (the seed's format table, measured)."""
    from tooltune.gguf.quantize import quantize_gguf
    from tooltune.gguf.report import gguf_report

    config: PipelineConfig = ctx.config
    source = ctx.upstream_output("gguf", "gguf")
    outputs: dict[str, str | Path] = {}
    files = []
    for qtype in config.pipeline.quantize:
        out = ctx.work_dir / f"model-{qtype}.gguf"
        result = quantize_gguf(source, out, qtype)
        ctx.console.print(result.summary())
        outputs[qtype] = out
        files.append(
            {
                "name": out.name,
                "path": str(out),
                "type": result.qtype,
                "bytes": result.size_bytes,
                "bits_per_weight": round(result.bits_per_weight, 3),
                "label": f"tuned {qtype}",
            }
        )
    metrics: dict[str, Any] = {"files": files}
    tokens = config.pipeline.gguf_report_tokens
    if tokens > 0:
        quality = gguf_report([source, *outputs.values()], max_tokens=tokens, chunk_size=min(256, tokens))
        report_path = ctx.work_dir / "gguf_report.md"
        write_text(report_path, quality.to_markdown())
        ctx.console.print(quality.to_markdown())
        metrics["report"] = quality.to_markdown()
        outputs["gguf_report"] = report_path
    sizes = ", ".join(f"{f['type']} {f['bytes'] / 2**20:.0f} MiB ({f['bits_per_weight']:.2f} bpw)" for f in files)
    return StageOutput(outputs, summary=sizes, metrics=metrics)


def run_modelfile(ctx: StageContext) -> StageOutput:
    """An Ollama Modelfile for the first quantized file (or the F16): FROM, a Go TEMPLATE equivalent to the GGUF's
    chat template where one is proven, stop tokens and defaults."""
    from tooltune.serve.modelfile import ModelfileError, go_template_for, read_gguf_chat_info, write_modelfile

    config: PipelineConfig = ctx.config
    record = ctx.records.get("quantize")
    if config.pipeline.quantize and record and record.outputs:
        gguf = ctx.upstream_output("quantize", config.pipeline.quantize[0])
    else:
        gguf = ctx.upstream_output("gguf", "gguf")
    name = default_serve_name(config)
    out = ctx.work_dir / "Modelfile"
    warnings: list[str] = []
    chat_template, _ = read_gguf_chat_info(gguf)
    try:
        go_template_for(chat_template)
        include_template = True
    except ModelfileError as exc:
        # Still useful: Ollama 0.30+ renders the GGUF's own Jinja template, which is the training layout.
        include_template = False
        warnings.append(f"Modelfile written without TEMPLATE ({exc})")
        ctx.console.print(f"[yellow]warning:[/yellow] {warnings[-1]}")
    write_modelfile(gguf, out, name=name, include_template=include_template)
    backend_check = _check_backends(ctx, gguf, out, warnings)
    metrics = {
        "name": name,
        "path": str(out),
        "gguf": str(gguf),
        "text": out.read_text(encoding="utf-8"),
        "template": include_template,
        "warnings": warnings,
        "backend_check": backend_check,
    }
    summary = f"{out} (FROM {gguf.name}, name {name}" + (")" if include_template else ", no TEMPLATE: see warning)")
    return StageOutput({"modelfile": out}, summary=summary, metrics=metrics)


def _check_backends(ctx: StageContext, gguf: Path, modelfile: Path, warnings: list[str]) -> dict[str, Any]:
    """`tooltune check-backends` on the first conversations: training, HF, GGUF and Modelfile renders and every
    parser path, so the report says whether what ships sees what was trained (a mismatch warns; the table says
    where)."""
    from tooltune.backend_check import pipeline_metrics

    config: PipelineConfig = ctx.config
    try:
        metrics = pipeline_metrics(config.data, ctx.upstream_output("export", "model"), gguf, modelfile)
    except TooltuneError as exc:
        warnings.append(f"check-backends could not run ({exc})")
        ctx.console.print(f"[yellow]warning:[/yellow] {warnings[-1]}")
        return {}
    ctx.console.print(metrics["summary"])
    if metrics["mismatches"]:
        warnings.append(f"{metrics['summary']}; the report's table shows where")
        ctx.console.print(f"[yellow]warning:[/yellow] {warnings[-1]}")
    return metrics


def run_adapter_gguf(ctx: StageContext) -> StageOutput:
    """The unmerged way to ship (``ship_adapter``): the base as GGUF (quantized like the merged model) plus the LoRA
    as its own llama.cpp adapter GGUF, a Modelfile with ``FROM base`` + ``ADAPTER``, next to the merged files."""
    from tooltune.gguf.adapter import convert_adapter
    from tooltune.gguf.convert import convert
    from tooltune.gguf.quantize import quantize_gguf
    from tooltune.serve.modelfile import ModelfileError, go_template_for, read_gguf_chat_info, write_modelfile

    config: PipelineConfig = ctx.config
    outtype = config.pipeline.gguf_outtype.lower()
    # The base GGUF carries the training chat template (the merged GGUF's), so the adapter is prompted as trained.
    chat_template, _ = read_gguf_chat_info(ctx.upstream_output("gguf", "gguf"))
    base = convert(base_model_dir(config), ctx.work_dir / f"base-{outtype}.gguf", outtype,
                   chat_template=chat_template or None, show_progress=False).path
    files = [{"name": base.name, "path": str(base), "type": outtype.upper(), "bytes": base.stat().st_size}]
    served_base = base
    if config.pipeline.quantize:
        qtype = config.pipeline.quantize[0]
        served_base = quantize_gguf(base, ctx.work_dir / f"base-{qtype}.gguf", qtype, show_progress=False).output
        files.append({"name": served_base.name, "path": str(served_base), "type": qtype,
                      "bytes": served_base.stat().st_size})
    # The adapter's tensors are checked against the F16 base; the same names and shapes hold for its quantized copy.
    adapter = convert_adapter(ctx.upstream_output("train", "adapter"), base, ctx.work_dir / "adapter-f16.gguf",
                              "f16").path
    files.append({"name": adapter.name, "path": str(adapter), "type": "LoRA F16", "bytes": adapter.stat().st_size})
    name = default_serve_name(config)
    out = ctx.work_dir / "Modelfile"
    try:
        go_template_for(chat_template)
        include_template = True
    except ModelfileError:
        include_template = False  # the merged Modelfile's warning says why; Ollama renders the GGUF's Jinja
    write_modelfile(served_base, out, name=name, include_template=include_template, adapter=adapter)
    serve_command = f"tooltune serve {served_base} --lora {name}={adapter}"
    metrics = {"files": files, "name": name, "path": str(out), "text": out.read_text(encoding="utf-8"),
               "serve": serve_command}
    summary = (f"{adapter.name} {adapter.stat().st_size / 2**20:.2f} MiB over {served_base.name} "
               f"{served_base.stat().st_size / 2**20:.1f} MiB; {out}")
    scored = {"all": files[:-1], "quant": files[1:-1] or files[:1], "none": []}[config.pipeline.adapter_eval]
    if has_eval_data(config) and scored:
        # What the cheaper path costs: the held-out cases through base + adapter (llama.cpp applying the LoRA, as
        # `tooltune serve --lora` and Ollama's ADAPTER do), scored like the merged files in eval/eval_quants.
        from tooltune.eval import evaluate
        from tooltune.pipeline.evaluation import eval_cases, eval_chat_template, headline_row

        labelled = [(f"adapter + base {f['type']}", f"{f['path']}#{adapter}") for f in scored]
        report = evaluate([spec for _, spec in labelled], eval_cases(config), ctx.work_dir / "eval",
                          max_tokens=config.pipeline.eval_max_new_tokens, chat_template=eval_chat_template(config),
                          constrain_calls=config.pipeline.eval_constrain_calls, console=ctx.console)
        metrics["rows"] = [headline_row(label, run) for (label, _), run in zip(labelled, report.runs, strict=True)]
        # Each row next to the merged file of the same type (F16 with F16, Q4_K_M with merged-then-quantized Q4_K_M),
        # which the eval stages scored on the same held-out cases: the report sets them side by side.
        metrics["compare"] = [
            {"type": f["type"], "adapter_row": label, "base_bytes": f["bytes"], "adapter_bytes": files[-1]["bytes"],
             "merged_row": f"tuned {outtype}" if f is files[0] else f"tuned {f['type']}"}  # the eval stages' labels
            for f, (label, _) in zip(scored, labelled, strict=True)
        ]
        summary += "; " + "; ".join(f"{row['model']}: {row['right_name']}/{row['cases']} right function"
                                    for row in metrics["rows"])
    outputs: dict[str, str | Path] = {"base_gguf": served_base, "adapter_gguf": adapter, "modelfile": out}
    if "rows" in metrics:
        # The scores are an output too: the report re-renders when they change even if every file above is the same.
        outputs["eval_report"] = ctx.work_dir / "eval" / "report.json"
    return StageOutput(outputs, summary=summary, metrics=metrics)


def run_report(ctx: StageContext) -> StageOutput:
    from tooltune.pipeline.manifest import read_manifest
    from tooltune.pipeline.report import write_report

    report = write_report(read_manifest(ctx.run_dir), ctx.run_dir)
    outputs: dict[str, str | Path] = {"report": report}
    for png in sorted(ctx.run_dir.glob("*.png")):
        outputs[png.name] = png
    return StageOutput(outputs, summary=f"{report} ({len(outputs) - 1} chart(s))")


# ------------------------------------------------------------------------------------------------------- eval


def run_eval(ctx: StageContext) -> StageOutput:
    from tooltune.pipeline.evaluation import evaluate_stage

    return evaluate_stage(ctx, quants=False)


def run_eval_quants(ctx: StageContext) -> StageOutput:
    from tooltune.pipeline.evaluation import evaluate_stage

    return evaluate_stage(ctx, quants=True)


def has_eval_data(config: PipelineConfig) -> bool:
    return bool(config.pipeline.eval_dataset or config.data.val_size)


def eval_params(config: PipelineConfig) -> dict[str, Any]:
    p = config.pipeline
    return {
        "data": data_params(config),
        "eval_dataset": p.eval_dataset,
        "max_cases": p.eval_max_cases,
        "categories": p.eval_categories,
        "max_new_tokens": p.eval_max_new_tokens,
        "base": p.eval_base,
        "engine": p.eval_engine,
        "constrain_calls": p.eval_constrain_calls,
    }


def model_inputs(config: PipelineConfig) -> dict[str, Path]:
    return {"base_model": base_model_source(config)}


def build_stages() -> list[Stage]:
    """The stage graph. ``params``/``inputs`` name everything that changes a stage's result (hashed for skipping)."""
    return [
        Stage(
            "preview",
            run_preview,
            "data → tokens and labels (the seed's debug print)",
            params=lambda c: {"data": data_params(c), "samples": c.pipeline.preview_samples},
            inputs=lambda c: {**dataset_files(c), **model_inputs(c)},
        ),
        Stage(
            "train",
            run_train,
            "LoRA SFT",
            params=lambda c: {
                "data": data_params(c),
                "model": dataclasses.asdict(c.model),
                "finetune": dataclasses.asdict(c.finetune),
                # Where outputs go is the pipeline's business, not part of what is trained.
                "training": {
                    k: v
                    for k, v in dataclasses.asdict(c.training).items()
                    if k not in ("output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_dir")
                },
            },
            inputs=lambda c: {**dataset_files(c), **model_inputs(c)},
        ),
        Stage(
            "export",
            run_export,
            "merge LoRA into the base (llamafactory-cli export)",
            deps=("train",),
            params=lambda c: {
                "export_size": c.pipeline.export_size,
                "export_dtype": c.pipeline.export_dtype,
                "template": c.data.template,
            },
            inputs=model_inputs,
        ),
        Stage(
            "gguf",
            run_gguf,
            "HF → GGUF (convert_hf_to_gguf.py)",
            deps=("export",),
            params=lambda c: {"outtype": c.pipeline.gguf_outtype.lower()},
        ),
        Stage(
            "eval",
            run_eval,
            "tool-calling accuracy, base vs tuned",
            deps=("gguf", "export"),
            params=eval_params,
            inputs=lambda c: {**dataset_files(c), **model_inputs(c)},
            enabled=has_eval_data,
        ),
        Stage(
            "quantize",
            run_quantize,
            "llama-quantize",
            deps=("gguf",),
            params=lambda c: {"types": c.pipeline.quantize, "report_tokens": c.pipeline.gguf_report_tokens},
            enabled=lambda c: bool(c.pipeline.quantize),
        ),
        Stage(
            "eval_quants",
            run_eval_quants,
            "tool-calling accuracy of each quantized file",
            deps=("quantize",),
            params=eval_params,
            inputs=dataset_files,
            enabled=lambda c: has_eval_data(c) and bool(c.pipeline.quantize),
        ),
        Stage(
            "modelfile",
            run_modelfile,
            "Ollama Modelfile",
            deps=("quantize", "gguf"),
            params=lambda c: {"name": default_serve_name(c), "quantize": c.pipeline.quantize[:1]},
        ),
        Stage(
            "adapter_gguf",
            run_adapter_gguf,
            "LoRA as its own GGUF over the base GGUF (Ollama ADAPTER, serve --lora)",
            deps=("train", "gguf"),
            params=lambda c: {"name": default_serve_name(c), "outtype": c.pipeline.gguf_outtype.lower(),
                              "quantize": c.pipeline.quantize[:1],
                              "eval": eval_params(c) if has_eval_data(c) else None,
                              "adapter_eval": c.pipeline.adapter_eval},
            inputs=lambda c: {**dataset_files(c), **model_inputs(c)},
            enabled=lambda c: c.pipeline.ship_adapter,
        ),
        Stage(
            "report",
            run_report,
            "report.md + charts",
            deps=("preview", "train", "export", "gguf", "eval", "quantize", "eval_quants", "modelfile",
                  "adapter_gguf"),
        ),
    ]


STAGE_NAMES = [stage.name for stage in build_stages()]


def run_pipeline(
    config: PipelineConfig,
    *,
    from_stage: str | None = None,
    only: str | None = None,
    console: Console | None = None,
) -> RunReport:
    console = console or Console()
    for note in config.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    run_dir = config.run_dir
    console.print(f"run directory: {run_dir}")
    from tooltune.synth.pipeline import apply_synth

    apply_synth(config, console)  # a `synth:` block: the dataset is generated first, into <run_dir>/synth
    config_record = config.record()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.json", json.dumps(config_record, indent=2, default=str) + "\n")
    return run_stages(
        build_stages(), config, run_dir, config_record=config_record, from_stage=from_stage, only=only, console=console
    )
