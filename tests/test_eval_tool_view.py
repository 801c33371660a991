"""The pipeline's held-out prompts offer the tools as training's template was given them.

The seed's tools come as a list of parameters. LLaMA-Factory's qwen layout prints them as the data has them; a Jinja
template (a family's, or the tokenizer's own with ``--template jinja``) is given them as clients send them — an
OpenAI schema. Eval once handed every template the data's list, so a Jinja-trained model was scored on prompts it
never saw in training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tooltune import chat_template
from tooltune.conversation import Conversation, Message, Tool
from tooltune.families.family import FAMILIES
from tooltune.pipeline.config import load_pipeline_config
from tooltune.pipeline.evaluation import eval_cases
from tooltune.templates import get_template

SEED_TOOL = {"name": "HandleTongzhiTonggao", "description": "新增、修改、删除通告",
             "parameters": [{"name": "operation", "description": "ADD / DELETE", "required": True},
                            {"name": "content", "description": "内容", "required": True}]}
CALL = {"name": "HandleTongzhiTonggao", "arguments": {"operation": "ADD", "content": "今天中午12点公司放假"}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seed_data")
    record = {"conversations": [{"from": "human", "value": "新增通告：今天中午12点公司放假"},
                                {"from": "function_call", "value": json.dumps(CALL, ensure_ascii=False)}],
              "tools": json.dumps([SEED_TOOL], ensure_ascii=False)}
    (root / "seed.json").write_text(json.dumps([record], ensure_ascii=False), encoding="utf-8")
    (root / "dataset_info.json").write_text(json.dumps({"seed": {
        "file_name": "seed.json", "formatting": "sharegpt",
        "columns": {"messages": "conversations", "tools": "tools"}}}), encoding="utf-8")
    return root


def _cases(data_dir: Path, template: str, tmp_path: Path) -> list:
    config = load_pipeline_config(["--dataset", "seed", "--dataset_dir", str(data_dir), "--template", template,
                                   "--eval_dataset", "seed", "--run_dir", str(tmp_path / template)])
    return eval_cases(config)


def test_qwen_layout_keeps_the_data_shape(data_dir: Path, tmp_path: Path) -> None:
    (case,) = _cases(data_dir, "qwen", tmp_path)
    assert case.tools == [{"type": "function", "function": SEED_TOOL}]  # as LLaMA-Factory prints it


@pytest.mark.parametrize("template", ["jinja", "qwen3"])
def test_jinja_templates_get_the_schema_training_saw(data_dir: Path, tmp_path: Path, template: str) -> None:
    (case,) = _cases(data_dir, template, tmp_path)
    (offered,) = case.tools
    schema = offered["function"]["parameters"]
    assert schema["type"] == "object" and set(schema["properties"]) == {"operation", "content"}
    assert schema["required"] == ["operation", "content"]
    if template == "qwen3":
        # the eval prompt (the family's template on the case) is what training rendered before the call
        conv = Conversation([Message("user", "新增通告：今天中午12点公司放假")], tools=[Tool(SEED_TOOL)])
        trained = get_template("qwen3", None).render_prompt(conv)
        served = chat_template.render(FAMILIES["qwen3"].template_text(), case.messages, tools=case.tools,
                                      add_generation_prompt=True)
        assert served == trained
