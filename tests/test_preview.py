"""``tooltune preview`` / ``tooltune preprocess`` through the real CLI (typer app in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tooltune.cli import app
from tooltune.data import DataError

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=True)


def seed_fixture() -> dict:
    return json.loads((FIXTURES / "lf_parity" / "seed_sample1.json").read_text(encoding="utf-8"))


def test_seed_command_with_only_the_program_changed(qwen_tokenizer_dir: Path, demo_data_dir: Path) -> None:
    # The seed: python src/train.py --stage sft --model_name_or_path $MODEL_PATH --dataset glaive_toolcall_en_demo
    #           --template qwen --cutoff_len 2048 --do_train false   (plus the debug print patched into trainer.py)
    result = invoke(
        "preview", "--stage", "sft", "--model_name_or_path", str(qwen_tokenizer_dir),
        "--dataset", "glaive_toolcall_en_demo", "--dataset_dir", str(demo_data_dir),
        "--template", "qwen", "--cutoff_len", "2048", "--do_train", "false", "--format", "seed",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum(1 for line in lines if line.startswith("Input tokens: ")) == 10  # the seed's first 10 samples
    seed = seed_fixture()
    first_ids = next(line for line in lines if line.startswith("Input tokens: "))
    assert json.loads(first_ids.removeprefix("Input tokens: ")) == seed["input_tokens_first_100"]
    first_labels = next(line for line in lines if line.startswith("Labels: "))
    assert json.loads(first_labels.removeprefix("Labels: ")) == seed["labels"]
    assert "Decoded text: <|im_start|>system\nYou are Qwen, created by Alibaba Cloud." in result.output
    assert lines[-1].startswith("300 records kept, 0 rejected; 299 samples, 1 skipped;")


def test_dashed_flags_and_yaml_config(qwen_tokenizer_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "preview.yaml"
    config.write_text(
        f"model_name_or_path: {qwen_tokenizer_dir}\ndataset: glaive_toolcall_en_demo\ntemplate: qwen\n"
        "cutoff_len: 512\nmax_samples: 20\n",
        encoding="utf-8",
    )
    from_yaml = invoke("preview", str(config), "--num-samples", "1", "--format", "seed")
    dashed = invoke(
        "preview", f"--model-name-or-path={qwen_tokenizer_dir}", "--dataset", "glaive_toolcall_en_demo",
        "--cutoff-len", "512", "--max-samples", "20", "--num-samples", "1", "--format", "seed",
    )  # fmt: skip
    assert from_yaml.exit_code == 0 and dashed.exit_code == 0, (from_yaml.output, dashed.output)
    assert from_yaml.output == dashed.output
    assert "at cutoff_len 512 (safe)" in dashed.output and "20 records kept" in dashed.output


def test_rich_view_highlights_and_summarises(qwen_tokenizer_dir: Path, tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]},
        {"messages": [{"role": "assistant", "content": "wrong order"}]},
        {"messages": [{"role": "user", "content": "long " * 300}, {"role": "assistant", "content": "ok"}]},
    ]
    data = tmp_path / "mini.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    result = invoke(
        "preview", "--model_name_or_path", str(qwen_tokenizer_dir), "--dataset", str(data), "--cutoff_len", "128"
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "sample 1" in out and "trained" in out and "hello there" in out
    assert f"rejected {data} record 1: bad role order: 'assistant' at message 0" in " ".join(out.split())
    assert "skipped" in out and "first turn alone is" in out
    assert out.splitlines()[-1].startswith("2 records kept, 1 rejected; 1 samples, 1 skipped;")


def test_highlighted_marks_only_trained_tokens(smollm2_tokenizer_dir: Path) -> None:
    from tooltune.conversation import Conversation, Message
    from tooltune.data import load_tokenizer
    from tooltune.encode import encode_conversation
    from tooltune.preview import highlighted
    from tooltune.templates import get_template

    tok = load_tokenizer(smollm2_tokenizer_dir)  # small and loads fast; it has <|im_start|>/<|im_end|> too
    conv = Conversation(messages=[Message("user", "hi"), Message("assistant", "hello")])
    text = highlighted(encode_conversation(conv, get_template("qwen", tok)), tok)
    trained = [text.plain[span.start : span.end] for span in text.spans if "green" in str(span.style)]
    assert trained == ["hello<|im_end|>\n"]


def test_strict_and_unknown_flags(qwen_tokenizer_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad.json"
    data.write_text(json.dumps([{"conversations": [{"from": "gpt", "value": "x"}]}]), encoding="utf-8")
    result = invoke("preview", "--model_name_or_path", str(qwen_tokenizer_dir), "--dataset", str(data), "--strict")
    assert isinstance(result.exception, DataError) and "bad.json record 0: bad role order" in str(result.exception)
    typo = invoke("preview", "--cutof_len", "10")
    assert typo.exit_code == 2 and "did you mean --cutoff_len" in typo.output
    stage = invoke("preview", "--stage", "dpo", "--model_name_or_path", str(qwen_tokenizer_dir), "--dataset", str(data))
    assert isinstance(stage.exception, DataError) and "--stage dpo" in str(stage.exception)


def test_preprocess_writes_one_row_per_sample(qwen_tokenizer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "glaive.jsonl"
    result = invoke(
        "preprocess", "--model_name_or_path", str(qwen_tokenizer_dir), "--dataset", "glaive_toolcall_en_demo",
        "--cutoff_len", "2048", "--cutoff_policy", "lf", "--max_samples", "40", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["index"] for r in rows] == list(range(40))
    assert set(rows[0]) == {"index", "input_ids", "labels"}
    assert rows[0]["labels"] == seed_fixture()["labels"]
    assert "wrote 40 rows" in result.output
    assert [p.name for p in out.parent.iterdir()] == ["glaive.jsonl"]  # no temp file left behind

    packed = tmp_path / "packed.jsonl"
    result = invoke(
        "preprocess", "--model_name_or_path", str(qwen_tokenizer_dir), "--dataset", "glaive_toolcall_en_demo",
        "--max_samples", "30", "--packing", "--out", str(packed),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    blocks = [json.loads(line) for line in packed.read_text(encoding="utf-8").splitlines()]
    assert sorted(i for b in blocks for i in b["indices"]) == list(range(30))
    assert all(len(b["input_ids"]) == len(b["position_ids"]) == len(b["segment_ids"]) <= 2048 for b in blocks)

    # --share_prefix: the mini dataset's records offer the same tools, so rows share their beginning; the preview
    # says how much, and preprocess writes each row's segments (0 = the shared beginning).
    from test_train_support import write_mini_dataset

    data_dir = write_mini_dataset(tmp_path / "mini")
    common = ("--model_name_or_path", str(qwen_tokenizer_dir), "--dataset", "mini_tools", "--dataset_dir",
              str(data_dir), "--share_prefix", "true")
    result = invoke("preview", *common, "--num_samples", "0")
    assert result.exit_code == 0, result.output
    assert "12 samples in" in result.output and "rows sharing prompt prefixes" in result.output
    shared = tmp_path / "shared.jsonl"
    result = invoke("preprocess", *common, "--out", str(shared))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in shared.read_text(encoding="utf-8").splitlines()]
    assert sorted(i for r in rows for i in r["indices"]) == list(range(12)) and len(rows) < 12
    assert any(r["segment_ids"][0] == 0 for r in rows)
    missing = invoke(
        "preprocess", "--model_name_or_path", str(qwen_tokenizer_dir), "--dataset", "glaive_toolcall_en_demo"
    )
    assert isinstance(missing.exception, DataError) and "--out" in str(missing.exception)


@pytest.mark.slow
def test_preview_on_the_embedded_default_model(default_gguf: Path, tmp_path: Path, monkeypatch) -> None:
    """The README quick start: no --model_name_or_path means the embedded SmolLM2 GGUF's tokenizer."""
    monkeypatch.setenv("TOOLTUNE_CACHE", str(tmp_path / "cache"))
    result = invoke("preview", "--dataset", "glaive_toolcall_en_demo", "--max_samples", "5", "--num_samples", "1")
    assert result.exit_code == 0, result.output
    assert "<|im_start|>" in result.output and result.output.splitlines()[-1].startswith("5 records kept, 0 rejected")
    assert any((tmp_path / "cache" / "tokenizers").iterdir())  # converted once, reused next time
