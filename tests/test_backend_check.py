"""`tooltune check-backends` per family: a tiny model with the family's real tokenizer, saved as `tooltune export`
saves a fine-tune (its training template written as the folder's chat template), converted by our GGUF converter;
the training render, the folder's template (HF), the GGUF's embedded one and the Modelfile TEMPLATE (Go's own
text/template) must render the glaive demo conversations identically, and every parser path must read the data's
calls. Then deliberate mismatches: a GGUF whose template differs, an edited Modelfile, no `go` on PATH."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from family_fixtures import FIXTURES, upstream_template
from tiny_models import (
    make_tiny_gemma3,
    make_tiny_llama32,
    make_tiny_mistral,
    make_tiny_phi4_mini,
    make_tiny_qwen2,
    make_tiny_qwen3_family,
    make_tiny_smollm3,
)
from typer.testing import CliRunner

from tooltune.backend_check import (
    PAIRS,
    CheckReport,
    default_template_name,
    open_backends,
    run_check,
    table_rows,
)
from tooltune.cli import app
from tooltune.conversation import Conversation
from tooltune.data.args import DataArguments
from tooltune.data.loader import load_conversations
from tooltune.families.family import FAMILIES
from tooltune.serve.go_template import NEEDS_GO

pytest.importorskip("gguf")


def _hermes3(out: Path) -> Path:
    """Hermes 3 is Llama 3's tokenizer with the `tool_use` chat template."""
    folder = make_tiny_llama32(out)
    (folder / "chat_template.jinja").write_text((FIXTURES / "hermes3" / "chat_template.jinja").read_text())
    return folder


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "qwen2.5": make_tiny_qwen2, "qwen3": make_tiny_qwen3_family, "llama3.2": make_tiny_llama32,
    "mistral": make_tiny_mistral, "phi4-mini": make_tiny_phi4_mini, "smollm3": make_tiny_smollm3,
    "hermes3": _hermes3, "gemma3": make_tiny_gemma3,
}
RECORDS = 8  # glaive en demo records per family: calls, results, plain replies (a few seconds per family)


def _export_like(family: str, root: Path) -> tuple[Path, Path]:
    """The tiny model as `tooltune export` leaves a fine-tune (the training template saved with the tokenizer) and
    its GGUF from our converter."""
    from transformers import AutoTokenizer

    from tooltune.gguf.convert import convert_to_gguf
    from tooltune.templates import get_template

    folder = BUILDERS[family](root / family)
    if family == "gemma3":
        # The test's SentencePiece model needs protobuf to load in transformers; the GGUF carries the same
        # vocabulary, and transformers reads it from there (then saves it as tokenizer.json in the folder).
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["chat_template"] = FAMILIES["gemma3"].template_text()
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        gguf = convert_to_gguf(folder, root / "gemma3.gguf", "f16", show_progress=False)
        AutoTokenizer.from_pretrained(root, gguf_file=Path(gguf).name, local_files_only=True).save_pretrained(folder)
        return folder, Path(gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if family == "hermes3":  # the folder's own template (not shipped) is the training one: --template jinja
        tokenizer.chat_template = (folder / "chat_template.jinja").read_text()
    else:
        tokenizer.chat_template = get_template(default_template_name(FAMILIES[family]), tokenizer).jinja_chat_template
    tokenizer.save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gguf = convert_to_gguf(folder, root / f"{family}.gguf", "f16", show_progress=False)
    return folder, Path(gguf)


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("backend_check")
    built: dict[str, tuple[Path, Path]] = {}

    def get(family: str) -> tuple[Path, Path]:
        if family not in built:
            built[family] = _export_like(family, root)
        return built[family]

    return get


@pytest.fixture(scope="session")
def glaive() -> list[Conversation]:
    return load_conversations(DataArguments(dataset="glaive_toolcall_en_demo", max_samples=RECORDS)).conversations


@pytest.fixture(scope="session")
def go_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("go") is None:
        pytest.skip("the Go toolchain (`go`, Debian package golang-go) is not installed")
    return tmp_path_factory.mktemp("go")


def _statuses(report: CheckReport, pair: str) -> set[str]:
    return {row.pairs[pair].status for row in report.rows}


@pytest.mark.parametrize("family", list(BUILDERS))
def test_every_backend_renders_the_training_text(family: str, exported: Callable[[str], tuple[Path, Path]],
                                                 glaive: list[Conversation], go_cache: Path) -> None:
    folder, gguf = exported(family)
    conversations = glaive
    if family == "hermes3":
        # This folder has only Hermes 3's `tool_use` template, which iterates tools=None: training refuses records
        # without tools (see the next test). A reply after a tool result (which the template closes differently when
        # it is the last message) is trained after the prompt a server renders, so those records are checked whole.
        conversations = [conv for conv in glaive if conv.tools]
    # --tool_view ollama: tools as Ollama shows them, so even the TEMPLATE is byte-equal to training.
    backends = open_backends(folder, gguf, tool_view="ollama", go_cache=go_cache)
    report = run_check(conversations, backends)
    print(f"\n{report.summary_line()}")
    assert report.family == family
    assert not any(row.error for row in report.rows), [row.error for row in report.rows]
    assert report.mismatches == 0, [(r.where, r.error, r.pairs, r.parse) for r in report.rows if r.mismatch]
    assert _statuses(report, "hf") == {"equal"} and _statuses(report, "gguf") == {"equal"}
    # Phi-4-mini's Jinja ends a finished conversation with EOS; the TEMPLATE leaves it open for Ollama. Prompts agree.
    assert _statuses(report, "modelfile") == ({"known"} if family == "phi4-mini" else {"equal"})
    if family == "phi4-mini":
        assert all("prompt" not in (row.pairs["modelfile"].difference.item) for row in report.rows)
    assert sum(row.parse.calls for row in report.rows) >= 3  # the records' calls, read by all five paths


def test_refused_conversations_are_reported(exported: Callable[[str], tuple[Path, Path]],
                                            glaive: list[Conversation], go_cache: Path) -> None:
    folder, gguf = exported("hermes3")
    without_tools = [conv for conv in glaive if not conv.tools][:2]
    assert len(without_tools) == 2
    report = run_check(without_tools, open_backends(folder, gguf, go_cache=go_cache))
    assert report.mismatches == 2 and all(row.error for row in report.rows)
    assert "refused by training" in "".join(" ".join(cells) for cells in table_rows(report))


# llama3.2 trains with its folder's own template (`jinja`), which prints each tool as it receives it: glaive's bare
# functions must be trained as clients send them (wrapped), or HF and GGUF renders differ at the tool list.
@pytest.mark.parametrize("family", ["qwen3", "llama3.2"])
def test_as_given_tools_differ_only_as_ollama_shows_them(family: str, exported: Callable[[str], tuple[Path, Path]],
                                                         glaive: list[Conversation], go_cache: Path) -> None:
    folder, gguf = exported(family)
    report = run_check(glaive, open_backends(folder, gguf, go_cache=go_cache))
    assert report.mismatches == 0
    known = [row.pairs["modelfile"] for row in report.rows if row.pairs["modelfile"].status == "known"]
    assert known and all("--tool_view ollama" in result.note for result in known)
    # Only conversations with tools can differ in Ollama's view of them.
    assert all(row.pairs["modelfile"].status == "equal" for row, conv in zip(report.rows, glaive, strict=True)
               if not conv.tools)


def test_broken_upstream_template_is_named_not_failed(tmp_path: Path, glaive: list[Conversation]) -> None:
    # SmolLM3's own template drops the assistant's calls: the base folder differs from training, for a known reason.
    folder = make_tiny_smollm3(tmp_path / "smollm3")
    (folder / "chat_template.jinja").write_text(upstream_template("smollm3"))  # the base model's own
    report = run_check(glaive, open_backends(folder, family="smollm3"))
    assert "known" in _statuses(report, "hf") and report.mismatches == 0
    row = next(r for r in report.rows if r.pairs["hf"].status == "known")
    assert "drops the assistant's tool calls" in row.pairs["hf"].note
    assert row.pairs["gguf"].status == "not checked" and "no GGUF" in report.sources["gguf"]


def test_a_gguf_with_another_template_fails_the_gate(exported: Callable[[str], tuple[Path, Path]],
                                                     glaive: list[Conversation], go_cache: Path,
                                                     tmp_path: Path) -> None:
    folder, _ = exported("qwen3")
    _, other = exported("qwen2.5")  # Qwen2.5's ChatML, not Qwen3's: same tokenizer family, different text
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["check-backends", "--model", str(folder), "--gguf", str(other),
                                      "--dataset", "glaive_toolcall_en_demo", "--max_samples", "3",
                                      "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "train = GGUF differs" in result.output and "first difference at character" in result.output
    saved = json.loads(out.read_text())
    assert saved["mismatches"] == 3
    difference = saved["rows"][0]["pairs"]["gguf"]["difference"]
    assert difference["position"] > 0 and difference["expected"] != difference["got"]
    assert saved["rows"][0]["pairs"]["hf"]["status"] == "equal"


def test_an_edited_modelfile_fails_at_its_position(exported: Callable[[str], tuple[Path, Path]], go_cache: Path,
                                                   glaive: list[Conversation], tmp_path: Path) -> None:
    from tooltune.serve.modelfile import write_modelfile

    folder, gguf = exported("mistral")
    modelfile = write_modelfile(gguf, tmp_path / "Modelfile")
    modelfile.write_text(modelfile.read_text().replace("[INST] ", "[INST]  "))  # one blank more before each query
    report = run_check(glaive[:2], open_backends(folder, gguf, modelfile, tool_view="ollama", go_cache=go_cache))
    assert report.mismatches == 2 and _statuses(report, "modelfile") == {"mismatch"}
    difference = report.rows[0].pairs["modelfile"].difference
    assert difference is not None and "prompt of message" in difference.item
    at = min(difference.position, 40)  # where the position falls in the context shown
    assert difference.expected[:at].endswith("[INST] ") and difference.got[at] == " "


def test_without_go_the_modelfile_is_not_checked(exported: Callable[[str], tuple[Path, Path]],
                                                 glaive: list[Conversation], monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    folder, gguf = exported("qwen2.5")
    monkeypatch.setenv("PATH", str(tmp_path))  # no go here
    backends = open_backends(folder, gguf, go_cache=tmp_path / "go")
    report = run_check(glaive[:2], backends)
    assert report.sources["modelfile"] == NEEDS_GO
    assert _statuses(report, "modelfile") == {"not checked"}
    assert "train = Modelfile: not checked" in report.summary_line()
    assert all(_statuses(report, pair) == {"equal"} for pair in PAIRS if pair != "modelfile")


def test_pipeline_report_shows_the_table(exported: Callable[[str], tuple[Path, Path]], go_cache: Path,
                                         tmp_path: Path) -> None:
    from tooltune.backend_check import pipeline_metrics
    from tooltune.pipeline.report import write_report
    from tooltune.serve.modelfile import write_modelfile

    folder, gguf = exported("qwen2.5")
    modelfile = write_modelfile(gguf, tmp_path / "Modelfile")
    metrics = pipeline_metrics(DataArguments(dataset="glaive_toolcall_en_demo", template="qwen"), folder, gguf,
                               modelfile, limit=3)
    assert metrics["mismatches"] == 0 and len(metrics["rows"]) == 3
    stage = {"status": "done", "wall_seconds": 1.0, "metrics": {
        "name": "toolcall", "path": str(modelfile), "gguf": str(gguf), "text": modelfile.read_text(),
        "warnings": [], "backend_check": metrics}}
    manifest = {"config": {}, "versions": {}, "stages": {"modelfile": stage}}
    text = write_report(manifest, tmp_path).read_text()
    assert "## One check across backends" in text
    assert "| conversation | texts | train = HF | train = GGUF | train = Modelfile | parse (5 paths) |" in text
    assert "| glaive_toolcall_en_demo.json record 0 |" in text and metrics["summary"] in text


def test_a_bos_that_is_also_a_turn_marker_is_not_a_difference() -> None:
    # SmolLM2's BOS is <|im_start|>: a template's own first <|im_start|> must not be taken for a BOS to drop.
    from tooltune.backend_check import Backends, Text, compare_go

    backends = Backends(template=None, family=None, hf_tokens=("<|im_start|>", "<|im_end|>"))
    text = Text("prompt of message 1", [], True, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert compare_go([text], [text.training], backends, None, {}).status == "equal"
    assert compare_go([text], [text.training.removeprefix("<|im_start|>")], backends, None, {}).status == "equal"
    result = compare_go([text], [text.training.replace("hi", "ho")], backends, None, {})
    assert result.status == "mismatch" and result.difference is not None and result.difference.position == 18
