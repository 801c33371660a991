"""Loaders: the dataset_info.json registry, sharegpt and OpenAI records, validation errors, strict mode, split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tooltune.data import DataArguments, DataError, load_conversations, split_train_val


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def sharegpt_record(*turns: tuple[str, str], tools: object = None) -> dict:
    record: dict = {"conversations": [{"from": f, "value": v} for f, v in turns]}
    record["tools"] = json.dumps([WEATHER_TOOL]) if tools is None else tools
    return record


GOOD = sharegpt_record(
    ("human", "Weather in Paris?"),
    ("function_call", json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})),
    ("observation", '{"temp": 21}'),
    ("gpt", "It is 21 degrees."),
)


def test_registry_loads_glaive_demo_like_llamafactory(demo_data_dir: Path) -> None:
    report = load_conversations(DataArguments(dataset="glaive_toolcall_en_demo", dataset_dir=str(demo_data_dir)))
    assert report.kept == 300 and report.rejected == []
    first = report.conversations[0]
    roles = ["user", "assistant", "user", "assistant", "tool", "assistant", "user", "assistant"]
    assert [m.role for m in first.messages] == roles
    assert first.tool_names() == ["search_recipes"]
    call = first.messages[3].tool_calls[0]
    assert call.name == "search_recipes" and call.arguments == {"ingredients": ["chicken", "bell peppers", "rice"]}
    assert first.source.endswith("glaive_toolcall_en_demo.json") and first.index == 0
    assert report.summary() == "glaive_toolcall_en_demo: 300 records kept, 0 rejected"


def test_default_dataset_dir_is_the_bundled_data() -> None:
    report = load_conversations(DataArguments(dataset="glaive_toolcall_zh_demo", max_samples=7))
    assert report.kept == 7


def test_two_datasets_concatenate_in_order(demo_data_dir: Path) -> None:
    args = DataArguments(dataset="glaive_toolcall_en_demo, glaive_toolcall_zh_demo", max_samples=5)
    report = load_conversations(args)
    assert [c.index for c in report.conversations] == [0, 1, 2, 3, 4] * 2
    assert [d.name for d in report.datasets] == ["glaive_toolcall_en_demo", "glaive_toolcall_zh_demo"]


def test_parallel_function_calls(tmp_path: Path) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Rome"}},
    ]
    record = sharegpt_record(
        ("human", "Paris and Rome?"), ("function_call", json.dumps(calls)), ("observation", "21"), ("gpt", "Both warm.")
    )
    report = load_conversations(DataArguments(dataset=str(write_json(tmp_path / "d.json", [record]))))
    assert [c.arguments["city"] for c in report.conversations[0].messages[1].tool_calls] == ["Paris", "Rome"]


def test_openai_jsonl_with_tool_calls_and_tool_role(tmp_path: Path) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "21 degrees."},
        ],
        "tools": [{"type": "function", "function": WEATHER_TOOL}],
    }
    report = load_conversations(DataArguments(dataset=str(write_jsonl(tmp_path / "chat.jsonl", [row]))))
    conv = report.conversations[0]
    assert conv.system == "Be brief."
    assert conv.messages[2].tool_calls[0].arguments == {"city": "Paris"}
    assert conv.messages[3].role == "tool" and conv.messages[3].tool_call_id == "c1"
    assert conv.tools[0].shape == "openai"


def test_registry_entry_with_openai_formatting_and_custom_columns(tmp_path: Path) -> None:
    rows = [{"dialog": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "fns": []}]
    write_jsonl(tmp_path / "mine.jsonl", rows)
    info = {
        "mine": {"file_name": "mine.jsonl", "formatting": "openai", "columns": {"messages": "dialog", "tools": "fns"}}
    }
    write_json(tmp_path / "dataset_info.json", info)
    report = load_conversations(DataArguments(dataset="mine", dataset_dir=str(tmp_path)))
    assert [m.content for m in report.conversations[0].messages] == ["hi", "hello"]


def test_registry_sharegpt_custom_tags(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "sys": "S"}]
    write_json(tmp_path / "tagged.json", rows)
    info = {
        "tagged": {
            "file_name": "tagged.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "system": "sys"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    }
    write_json(tmp_path / "dataset_info.json", info)
    conv = load_conversations(DataArguments(dataset="tagged", dataset_dir=str(tmp_path))).conversations[0]
    assert [(m.role, m.content) for m in conv.messages] == [("system", "S"), ("user", "hi"), ("assistant", "hello")]


def test_alpaca_records(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", [{"instruction": "Add", "input": "1+1", "output": "2", "history": [["q", "a"]]}])
    # As in LLaMA-Factory, history is read only when the entry names its column.
    write_json(tmp_path / "dataset_info.json", {"a": {"file_name": "a.json", "columns": {"history": "history"}}})
    conv = load_conversations(DataArguments(dataset="a", dataset_dir=str(tmp_path))).conversations[0]
    assert [m.content for m in conv.messages] == ["q", "a", "Add\n1+1", "2"]


BAD_RECORDS = [
    (sharegpt_record(("gpt", "hello"), ("human", "hi")), "bad role order: 'assistant' at message 0"),
    (sharegpt_record(("human", "hi"), ("gpt", "a"), ("gpt", "b")), "bad role order: 'assistant' at message 2"),
    (sharegpt_record(("human", "hi")), "does not end with an assistant turn"),
    (sharegpt_record(("human", "hi"), ("gpt", "ok"), tools='[{"name": "x",'), "tools are not valid JSON"),
    (
        sharegpt_record(("human", "hi"), ("function_call", '{"name": "get_weather", "arguments": {')),
        "message 1 (function_call): not valid JSON",
    ),
    (sharegpt_record(("human", "   "), ("gpt", "ok")), "message 0 (user) has empty content"),
    (sharegpt_record(("human", "hi"), ("gpt", "")), "message 1 (assistant) has empty content"),
    (sharegpt_record(("human", "hi"), ("bot", "ok")), "message 1: unknown role 'bot'"),
    (sharegpt_record(("human", "hi"), ("function_call", '{"arguments": {}}')), "tool call has no function name"),
]


def test_every_rejection_names_file_record_and_reason(tmp_path: Path) -> None:
    records = [GOOD] + [record for record, _ in BAD_RECORDS] + [GOOD]
    path = write_json(tmp_path / "mixed.json", records)
    report = load_conversations(DataArguments(dataset=str(path)))
    assert report.kept == 2 and [c.index for c in report.conversations] == [0, len(records) - 1]
    assert len(report.rejected) == len(BAD_RECORDS)
    for rejection, (index, (_, reason)) in zip(report.rejected, enumerate(BAD_RECORDS, start=1), strict=True):
        assert rejection.file == str(path) and rejection.index == index
        assert reason in rejection.reason, (rejection, reason)
        assert str(rejection).startswith(f"{path} record {index}: ")
    assert report.summary().endswith("2 records kept, 9 rejected")


def test_invalid_json_line_in_jsonl_is_a_rejection(tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = write_jsonl(tmp_path / "x.jsonl", [good, "{not json", "", good])
    report = load_conversations(DataArguments(dataset=str(path)))
    assert [c.index for c in report.conversations] == [0, 2]
    assert report.rejected[0].index == 1 and "line 2: not valid JSON" in report.rejected[0].reason


def test_openai_rejections_name_the_message(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]},
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]},
            ]
        },
        {
            "messages": [
                {"role": "tool", "content": "21"},
                {"role": "assistant", "content": "ok"},
                {"role": "tool", "content": ""},
            ]
        },
    ]
    report = load_conversations(DataArguments(dataset=str(write_jsonl(tmp_path / "o.jsonl", rows))))
    reasons = [r.reason for r in report.rejected]
    assert "message 1: unknown role 'robot'" in reasons[0]
    assert "message 1: tool call 'f': arguments are not valid JSON" in reasons[1]
    assert "message 2 (tool result) has empty content" in reasons[2]


def test_strict_makes_a_rejection_an_error(tmp_path: Path) -> None:
    path = write_json(tmp_path / "d.json", [GOOD, BAD_RECORDS[0][0]])
    with pytest.raises(DataError, match=r"d\.json record 1: bad role order.*--strict"):
        load_conversations(DataArguments(dataset=str(path), strict=True))


def test_registry_errors(tmp_path: Path, demo_data_dir: Path) -> None:
    with pytest.raises(DataError, match="did you mean glaive_toolcall_en_demo"):
        load_conversations(DataArguments(dataset="glaive_toolcall_en_dem", dataset_dir=str(demo_data_dir)))
    write_json(tmp_path / "dataset_info.json", {"hub": {"hf_hub_url": "x/y"}})
    with pytest.raises(DataError, match="hf_hub_url datasets are not downloaded"):
        load_conversations(DataArguments(dataset="hub", dataset_dir=str(tmp_path)))
    with pytest.raises(DataError, match="dataset_info.json: not found"):
        load_conversations(DataArguments(dataset="x", dataset_dir=str(tmp_path / "nowhere")))
    (tmp_path / "broken.json").write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        load_conversations(DataArguments(dataset=str(tmp_path / "broken.json")))
    with pytest.raises(DataError, match="no dataset given"):
        load_conversations(DataArguments())


def test_split_is_deterministic_disjoint_and_in_order(demo_data_dir: Path) -> None:
    convs = load_conversations(DataArguments(dataset="glaive_toolcall_en_demo")).conversations
    train, val = split_train_val(convs, 0.1, seed=42)
    again_train, again_val = split_train_val(convs, 0.1, seed=42)
    assert len(val) == 30 and len(train) == 270
    assert [c.index for c in val] == [c.index for c in again_val] and [c.index for c in train] == [
        c.index for c in again_train
    ]
    assert {c.index for c in train}.isdisjoint({c.index for c in val})
    assert [c.index for c in val] == sorted(c.index for c in val)
    other = split_train_val(convs, 0.1, seed=7)[1]
    assert [c.index for c in other] != [c.index for c in val]
    assert len(split_train_val(convs, 25, seed=42)[1]) == 25
    assert split_train_val(convs, 0, seed=42) == (convs, [])
    with pytest.raises(DataError, match="leaves no training records"):
        split_train_val(convs, 300, seed=42)
