"""``tooltune synth``: build verified training and held-out test data from tool schemas and a few examples."""

from __future__ import annotations

from pathlib import Path

import typer

SYNTH_HELP = (
    "Generate a LLaMA-Factory tool-calling dataset (sharegpt + dataset_info.json entry) and a held-out test file from "
    "a synth spec (or a tools JSON file): single calls over every enum value, clarification dialogues, results with "
    "answers, parallel calls and no-call turns, in the languages asked; every sample verified (jsonschema, grounding, "
    "near-duplicates), rejected ones kept with their reason."
)


def run_synth(
    spec_path: Path,
    out: Path,
    *,
    languages: str | None = None,
    name: str | None = None,
    seed: int | None = None,
    test_size: float | None = None,
    grounding: str | None = None,
    generator: str = "offline",
    teacher_url: str | None = None,
    teacher_model: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    concurrency: int = 4,
    cache: Path | None = None,
    structured: str = "auto",
    teacher_max_tokens: int = 256,
    max_samples: int | None = None,
) -> None:
    from rich.console import Console

    from tooltune.synth import load_spec, prepare, synthesize, write_outputs
    from tooltune.synth.spec import SynthError

    console = Console(stderr=True)
    overrides = {"languages": languages, "name": name, "seed": seed, "test_size": test_size, "grounding": grounding}
    spec = load_spec(spec_path, overrides)
    plan, offline = prepare(spec)
    if max_samples is not None:
        plan.items = plan.items[:max_samples]
    console.print(f"plan ({spec.source}):", highlight=False)
    console.print(plan.format(spec.languages), highlight=False, markup=False, soft_wrap=True)
    if generator == "offline":
        result = synthesize(spec, plan, offline=offline)
    elif generator == "teacher":
        from tooltune.synth.teacher import TeacherConfig, TeacherGenerator

        if not teacher_url or not teacher_model:
            raise SynthError("--generator teacher needs --teacher-url (OpenAI-compatible base URL) and --teacher-model")
        config = TeacherConfig(base_url=teacher_url, model=teacher_model, api_key_env=api_key_env,
                               concurrency=concurrency, cache_dir=cache or out / "teacher_cache", structured=structured,
                               max_tokens=teacher_max_tokens)
        teacher = TeacherGenerator(spec, offline, config, console=console)
        records = teacher.generate_all(plan.items)
        result = synthesize(spec, plan, generate=teacher.as_generate(records), offline=offline)
        console.print(teacher.summary(), highlight=False, markup=False)
    else:
        raise SynthError(f"--generator {generator!r}: expected offline or teacher")
    files = write_outputs(spec, result, out)
    console.print(f"wrote {files['train']} (train), {files['test']} (held-out), {files['dataset_info']}, "
                  f"{files['rejected']}, {files['report_md']}", highlight=False, markup=False, soft_wrap=True)
    typer.echo(result.summary())


def register(app: typer.Typer) -> None:
    @app.command("synth", help=SYNTH_HELP)
    def synth_command(
        spec: Path = typer.Argument(..., help="Synth spec (.yaml/.json) or a tools JSON file."),
        out: Path = typer.Option(Path("synth_data"), "--out", "-o", "--output_dir", "--output-dir",
                                 help="Folder for the dataset, dataset_info.json, held-out file and report."),
        languages: str | None = typer.Option(None, "--languages", "--language", help="Comma list: zh,en."),
        name: str | None = typer.Option(None, "--name", "--dataset", help="Dataset name in dataset_info.json."),
        seed: int | None = typer.Option(None, "--seed", help="Generation and split seed."),
        test_size: float | None = typer.Option(None, "--test_size", "--test-size", help="Held-out fraction."),
        grounding: str | None = typer.Option(None, "--grounding", help="strict (default) or off."),
        generator: str = typer.Option("offline", "--generator", help="offline (slot filling) or teacher (an LLM)."),
        teacher_url: str | None = typer.Option(None, "--teacher-url", "--teacher_url",
                                               help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1."),
        teacher_model: str | None = typer.Option(None, "--teacher-model", "--teacher_model", help="Model name."),
        api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", "--api_key_env",
                                        help="Environment variable holding the API key (never passed on the line)."),
        concurrency: int = typer.Option(4, "--concurrency", help="Teacher requests in flight at once."),
        cache: Path | None = typer.Option(None, "--cache", help="Teacher cache folder (default OUT/teacher_cache)."),
        structured: str = typer.Option("auto", "--structured",
                                       help="auto | json_schema | json_object | off: how to ask for JSON."),
        teacher_max_tokens: int = typer.Option(256, "--teacher-max-tokens", "--teacher_max_tokens",
                                               help="Tokens per teacher answer."),
        max_samples: int | None = typer.Option(None, "--max_samples", "--max-samples",
                                               help="Only the first N plan items."),
    ) -> None:
        run_synth(spec, out, languages=languages, name=name, seed=seed, test_size=test_size, grounding=grounding,
                  generator=generator, teacher_url=teacher_url, teacher_model=teacher_model,
                  api_key_env=api_key_env, concurrency=concurrency, cache=cache, structured=structured,
                  teacher_max_tokens=teacher_max_tokens, max_samples=max_samples)
