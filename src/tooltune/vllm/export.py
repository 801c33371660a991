"""``tooltune vllm-export``: a merged checkpoint → a vLLM-ready compressed-tensors checkpoint (FP8, W4A16, W8A8).

llm-compressor (the vLLM project's quantization library) does the quantization in its own environment
(``tooltune.vllm.env``), driven as a subprocess running ``worker.py``. This side does what needs tooltune: it renders
the user's training data with the training template into token ids (calibration and verification samples, as
JSONL), copies the tokenizer with its chat template and the generation config next to the new weights, shows
progress, and writes everything under a temporary name that is renamed only when the export and its check passed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from tooltune.atomic import atomic_dir
from tooltune.chat_template import load_from_tokenizer_dir
from tooltune.errors import TooltuneError
from tooltune.vllm import worker
from tooltune.vllm.env import ensure_env

SCHEMES: tuple[str, ...] = tuple(worker.SCHEMES)
REPORT_FILE = "tooltune_vllm_export.json"
# Files that are weights or weight metadata: llm-compressor writes its own; everything else travels verbatim.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".msgpack", ".h5")
NOT_COPIED = {"config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json", REPORT_FILE}


class VllmExportError(TooltuneError, RuntimeError):
    pass


@dataclass
class ExportOptions:
    scheme: str = "fp8"
    dataset: str | None = None
    dataset_dir: str | None = None
    template: str | None = None  # None: the checkpoint's own chat template (``jinja``), which is the training one
    calib_samples: int = 256
    max_seq_length: int = 2048
    verify_samples: int = 4
    verify_max_tokens: int = 256
    verify: bool = True
    trust_remote_code: bool = False


@dataclass
class Sample:
    input_ids: list[int]
    prompt_ids: list[int]
    text: str


@dataclass
class ExportResult:
    out: Path
    scheme: str
    seconds: float
    source_bytes: int
    output_bytes: int
    calibration_samples: int
    verification: dict[str, Any] = field(default_factory=dict)
    worker: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        ratio = self.source_bytes / self.output_bytes if self.output_bytes else 0.0
        line = (
            f"vllm-export {self.scheme}: {self.out} {self.output_bytes / 1e6:.1f} MB "
            f"(from {self.source_bytes / 1e6:.1f} MB, {ratio:.2f}x smaller) in {self.seconds:.0f} s, "
            f"{self.calibration_samples} calibration samples"
        )
        v = self.verification
        if v:
            line += (
                f"; vs unquantized on {v['samples']} samples / {v['positions']} positions: "
                f"mean KL {v['mean_kl']:.4g} nats, max KL {v['max_kl']:.3g}, top-1 agreement {v['top1_agreement']:.1%}"
            )
        return line


def _weights_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


def check_source(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise VllmExportError(f"{model_dir}: not a directory (pass the merged Hugging Face checkpoint)")
    if (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file():
        raise VllmExportError(
            f"{model_dir}: is a LoRA adapter; merge it first (`tooltune export`) — or serve it unmerged with "
            "`tooltune vllm-command` (--enable-lora)"
        )
    if not (model_dir / "config.json").is_file():
        raise VllmExportError(f"{model_dir}: no config.json (not a Hugging Face checkpoint)")
    if not any(model_dir.glob("*.safetensors")):
        raise VllmExportError(f"{model_dir}: no *.safetensors weights (tooltune loads safetensors only, never pickle)")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if isinstance(config.get("quantization_config"), dict):
        method = config["quantization_config"].get("quant_method")
        raise VllmExportError(f"{model_dir}: already quantized ({method}); export from the unquantized merged model")


def render_samples(model_dir: Path, options: ExportOptions) -> tuple[list[Sample], list[Sample], str]:
    """Calibration and verification samples: the training data rendered with the training template, as ids.

    Verification samples come from records calibration did not see when the dataset has enough of them.
    Returns (calibration, verification, a line saying where they came from).
    """
    from tooltune.data import BUNDLED_DATA_DIR, DataArguments, load_conversations, load_tokenizer
    from tooltune.templates import get_template

    calibrate = worker.SCHEMES[options.scheme]["calibrate"]
    dataset, dataset_dir = options.dataset, options.dataset_dir
    if dataset is None:
        if calibrate:
            raise VllmExportError(
                f"--scheme {options.scheme} calibrates on your training data: pass --dataset (and --dataset_dir, "
                "--template) as in training"
            )
        if not options.verify:
            return [], [], "no data needed"
        # FP8 dynamic needs no data; its check still needs text, so use the bundled demo conversations.
        dataset, dataset_dir = "glaive_toolcall_en_demo", str(BUNDLED_DATA_DIR)
    # Only the records that will be used are read and rendered (the first ones, as LLaMA-Factory's max_samples).
    wanted = (options.calib_samples if calibrate else 0) + (options.verify_samples if options.verify else 0)
    args = DataArguments(dataset=dataset, dataset_dir=dataset_dir or str(BUNDLED_DATA_DIR), max_samples=wanted)
    report = load_conversations(args)
    if not report.conversations:
        raise VllmExportError(f"{dataset}: no usable records ({len(report.rejected)} rejected)")
    tokenizer = load_tokenizer(model_dir, trust_remote_code=options.trust_remote_code)
    template_name = options.template or "jinja"
    if template_name == "jinja" and load_from_tokenizer_dir(model_dir) is None:
        raise VllmExportError(f"{model_dir}: the tokenizer has no chat template; pass --template NAME (as in training)")
    template = get_template(template_name, tokenizer)
    encoded = template.encode_turns(report.conversations)
    pairs = zip(report.conversations, encoded, strict=True)
    usable = [(conv, turns) for conv, turns in pairs if isinstance(turns, list)]
    failed = len(encoded) - len(usable)
    if not usable:
        raise VllmExportError(f"{dataset}: no conversation renders with template {template_name!r}")

    def to_sample(conv: Any, turns: list[tuple[list[int], list[int]]]) -> Sample:
        ids = [tok for prompt, response in turns for tok in (*prompt, *response)][: options.max_seq_length]
        prompt = list(turns[0][0][: options.max_seq_length])
        return Sample(input_ids=ids, prompt_ids=prompt, text=template.render_text(conv))

    n_calib = min(options.calib_samples, len(usable)) if calibrate else 0
    calibration = [to_sample(*pair) for pair in usable[:n_calib]]
    rest = usable[n_calib:] if len(usable) - n_calib >= options.verify_samples else usable
    verification = [to_sample(*pair) for pair in rest[: options.verify_samples]] if options.verify else []
    source = (
        f"{dataset}: {len(report.conversations)} records ({len(report.rejected)} rejected, {failed} not renderable) "
        f"rendered with template {template_name!r}"
    )
    return calibration, verification, source


def _write_jsonl(path: Path, samples: list[Sample]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for sample in samples:
            row = {"input_ids": sample.input_ids, "prompt_ids": sample.prompt_ids, "text": sample.text}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def copy_tokenizer_files(source: Path, dest: Path) -> list[str]:
    """Tokenizer, chat template, generation config and other small files, copied byte for byte."""
    copied = []
    for item in sorted(source.iterdir()):
        if not item.is_file() or item.name in NOT_COPIED or item.suffix in WEIGHT_SUFFIXES:
            continue
        if item.name.startswith(("adapter_", ".")):
            continue
        shutil.copy2(item, dest / item.name)
        copied.append(item.name)
    return copied


def run_worker(python: Path, request: dict[str, Any], work: Path, console: Console,
               failure_log: Path | None = None) -> dict[str, Any]:
    """Run worker.py in the isolated environment, turning its progress events into a status line."""
    request_file = work / "request.json"
    request_file.write_text(json.dumps(request), encoding="utf-8")
    log_file = work / "worker.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # the main install's packages must not leak into the isolated environment
    started = time.monotonic()
    with open(log_file, "w", encoding="utf-8") as log, console.status("llm-compressor: starting") as status:
        proc = subprocess.Popen(
            [str(python), worker.__file__, str(request_file)],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=work,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(worker.EVENT_PREFIX):
                event = json.loads(line[len(worker.EVENT_PREFIX):])
                if event["event"] == "stage":
                    elapsed = time.monotonic() - started
                    status.update(f"llm-compressor [bold]{event['name']}[/bold]: {event.get('detail', '')} "
                                  f"[dim]({elapsed:.0f} s)[/dim]")
            else:
                log.write(line)
        code = proc.wait()
    if code != 0:
        kept_log = failure_log or Path(request["out"]).with_suffix(".log")
        shutil.copy2(log_file, kept_log)
        lines = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        errors = [line for line in lines if line and not line.startswith((" ", "Traceback"))][-3:]
        raise VllmExportError(f"llm-compressor failed (exit {code}): {' | '.join(errors)} (full log: {kept_log})")
    return json.loads(Path(request["result"]).read_text(encoding="utf-8"))


def vllm_export(model_dir: str | Path, out: str | Path, options: ExportOptions | None = None,
                console: Console | None = None) -> ExportResult:
    """Quantize ``model_dir`` with llm-compressor into ``out`` and compare it with the original on rendered samples."""
    options = options or ExportOptions()
    console = console or Console(stderr=True)
    model_dir, out = Path(model_dir), Path(out)
    if options.scheme not in worker.SCHEMES:
        raise VllmExportError(f"unknown --scheme {options.scheme!r}; choose one of {', '.join(SCHEMES)}")
    if options.calib_samples < 1:
        raise VllmExportError("--calib-samples must be at least 1")
    if out.resolve() == model_dir.resolve():
        raise VllmExportError(f"--out {out} is the source directory; choose a new one")
    check_source(model_dir)
    if options.scheme != "fp8" and not _cuda_available():
        # Calibration runs a forward pass per layer per sample (AWQ: ~20 per layer for its scale search); fine for
        # small models, hours for a 7B. Say so up front rather than appear to hang.
        console.print(f"[yellow]no CUDA GPU: {options.scheme} calibration runs on the CPU (slow for models over ~1B)"
                      "[/yellow]")
    started = time.monotonic()
    calibration, verification, source_line = render_samples(model_dir, options)
    console.print(f"[dim]samples: {source_line}; {len(calibration)} for calibration, "
                  f"{len(verification)} for the check[/dim]")
    python = ensure_env(console)
    with tempfile.TemporaryDirectory(prefix="tooltune-vllm-") as work_name, atomic_dir(out) as staging:
        work = Path(work_name)
        staging.chmod(0o755)  # mkdtemp makes it private; the export is an ordinary model directory
        _write_jsonl(work / "calibration.jsonl", calibration)
        _write_jsonl(work / "verification.jsonl", verification)
        copy_tokenizer_files(model_dir, staging)
        if options.template and load_from_tokenizer_dir(model_dir) is None:
            # The checkpoint has no chat template: ship the training template's, so serving renders the same layout.
            from tooltune.data import load_tokenizer
            from tooltune.templates import get_template

            template = get_template(options.template, load_tokenizer(model_dir))
            (staging / "chat_template.jinja").write_text(template.jinja_chat_template, encoding="utf-8")
        request = {
            "model": str(model_dir.resolve()),
            "out": str(staging.resolve()),
            "scheme": options.scheme,
            "calibration": str(work / "calibration.jsonl"),
            "verification": str(work / "verification.jsonl"),
            "max_seq_length": options.max_seq_length,
            "verify_max_tokens": options.verify_max_tokens,
            "trust_remote_code": options.trust_remote_code,
            "result": str(work / "result.json"),
        }
        result = run_worker(python, request, work, console, failure_log=out.with_name(f"{out.name}.failed.log"))
        # save_pretrained may rewrite generation_config.json; the source's is the one the fine-tune was tested with.
        if (model_dir / "generation_config.json").is_file():
            shutil.copy2(model_dir / "generation_config.json", staging / "generation_config.json")
        verification_result = result.get("verification") or {}
        if verification_result and not verification_result.get("finite", True):
            raise VllmExportError("the quantized model produces non-finite outputs; the export was not kept")
        export = ExportResult(
            out=out,
            scheme=options.scheme,
            seconds=time.monotonic() - started,
            source_bytes=_weights_bytes(model_dir),
            output_bytes=_weights_bytes(staging),
            calibration_samples=len(calibration),
            verification=verification_result,
            worker=result,
        )
        report = {
            "source": str(model_dir),
            "scheme": options.scheme,
            "samples": source_line,
            "summary": export.summary(),
            **result,
        }
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    console.print(export.summary())
    return export
