"""Case extraction (glaive samples, OpenAI messages, BFCL records), the held-out split, and Wilson intervals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tooltune.conversation import ToolCall
from tooltune.data.args import DataArguments
from tooltune.data.loader import load_conversations
from tooltune.data.split import split_train_val
from tooltune.eval.cases import CaseError, bfcl_category, cases_from_conversations, load_bfcl, load_cases
from tooltune.eval.metrics import percentile, rate, wilson_interval

BFCL = Path(__file__).parent / "fixtures" / "bfcl"

WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {"name": "get_time", "description": "Local time", "parameters": [{"name": "city", "required": True}]}


def _glaive_file(tmp_path: Path) -> Path:
    """Sharegpt records shaped like glaive_toolcall_en_demo: one call, parallel calls, text turns, tool results."""
    records = [
        {
            "conversations": [
                {"from": "human", "value": "Weather in Paris?"},
                {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
                {"from": "observation", "value": '{"temp": 21}'},
                {"from": "gpt", "value": "It is 21 degrees in Paris."},
            ],
            "tools": json.dumps([WEATHER]),
        },
        {
            "conversations": [
                {"from": "human", "value": "Weather and time in Rome and Oslo?"},
                {"from": "function_call", "value": json.dumps([
                    {"name": "get_weather", "arguments": {"city": "Rome"}},
                    {"name": "get_time", "arguments": {"city": "Oslo"}},
                ])},
                {"from": "observation", "value": '{"temp": 25}'},
                {"from": "observation", "value": '{"time": "10:00"}'},
                {"from": "gpt", "value": "25 degrees in Rome; 10:00 in Oslo."},
            ],
            "tools": json.dumps([WEATHER, TIME]),
        },  # fmt: skip
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}], "tools": "[]"},
    ]
    path = tmp_path / "glaive_like.json"
    path.write_text(json.dumps(records))
    return path


def test_every_assistant_turn_becomes_a_case(tmp_path: Path) -> None:
    cases = load_cases(str(_glaive_file(tmp_path)))
    assert [(c.id.split("#")[1], c.category) for c in cases] == [
        ("0@1", "simple"),
        ("0@3", "no_call"),
        ("1@1", "parallel_multiple"),
        ("1@4", "no_call"),
        ("2@1", "no_tools"),
    ]
    single, after_result, parallel = cases[0], cases[1], cases[2]
    assert single.messages == [{"role": "user", "content": "Weather in Paris?"}]
    assert single.expected_calls == [ToolCall("get_weather", {"city": "Paris"})]
    assert single.answers == [{"get_weather": {"city": ["Paris"]}}]
    assert single.tools == [{"type": "function", "function": WEATHER}]  # wrapped like LLaMA-Factory's qwen template
    # The text turn after a tool result sees the call and the result in its history.
    assert [m["role"] for m in after_result.messages] == ["user", "assistant", "tool"]
    first_call = after_result.messages[1]["tool_calls"][0]["function"]
    assert first_call == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert not after_result.expects_call and after_result.expected_text == "It is 21 degrees in Paris."
    assert [c.name for c in parallel.expected_calls] == ["get_weather", "get_time"]
    # The seed's list-of-parameters tool is checked against its JSON-schema view.
    time_fn = next(f for f in parallel.functions if f["name"] == "get_time")
    assert time_fn["parameters"]["required"] == ["city"]
    assert cases[3].messages[-2:] == [
        {"role": "tool", "content": '{"temp": 25}'},
        {"role": "tool", "content": '{"time": "10:00"}'},
    ]


def test_glaive_demo_cases_and_held_out_split_match_training(demo_data_dir: Path) -> None:
    args = DataArguments(dataset="glaive_toolcall_en_demo", dataset_dir=str(demo_data_dir), val_size=0.1, seed=42)
    cases = load_cases(args, split="val")
    _, held_out = split_train_val(load_conversations(args).conversations, 0.1, 42)
    held_out_ids = {c.index for c in held_out}
    assert {int(c.id.split("#")[1].split("@")[0]) for c in cases} == held_out_ids
    assert len(held_out) == 30
    assert {c.category for c in cases} >= {"simple", "no_call", "no_tools"}
    # The same split whatever the spelling: a dataset name with overrides gives the same cases.
    again = load_cases("glaive_toolcall_en_demo", split="val", val_size=0.1, seed=42, dataset_dir=str(demo_data_dir))
    assert [c.id for c in again] == [c.id for c in cases]
    assert len(load_cases(args, split="val", max_cases=7)) == 7


def test_split_val_needs_val_size(demo_data_dir: Path) -> None:
    with pytest.raises(CaseError, match="val_size"):
        load_cases("glaive_toolcall_en_demo", split="val", dataset_dir=str(demo_data_dir))


def test_openai_messages_dataset(tmp_path: Path) -> None:
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Lima?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lima"}'}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "18C"},
            {"role": "assistant", "content": "18C in Lima."},
        ],
        "tools": [{"type": "function", "function": WEATHER}],
    }  # fmt: skip
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(record) + "\n")
    cases = load_cases(str(path))
    assert [c.category for c in cases] == ["simple", "no_call"]
    assert cases[0].messages[0] == {"role": "system", "content": "Be brief."}
    assert cases[0].expected_calls == [ToolCall("get_weather", {"city": "Lima"})]


def test_bfcl_loader_on_real_records() -> None:
    simple = load_bfcl(BFCL / "BFCL_v4_simple_python.json")
    assert [c.id for c in simple] == ["simple_python_0", "simple_python_2", "simple_python_7", "simple_python_13",
                                      "simple_python_17"]  # fmt: skip
    first = simple[0]
    assert first.category == "simple" and first.expects_call
    assert first.messages == [
        {"role": "user", "content": "Find the area of a triangle with a base of 10 units and height of 5 units."}
    ]
    assert first.answers == [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]
    assert first.expected_calls == [ToolCall("calculate_triangle_area", {"base": 10, "height": 5, "unit": "units"})]
    # The model sees JSON-schema types; the checker keeps BFCL's.
    shown = first.tools[0]["function"]["parameters"]
    assert shown["type"] == "object" and first.functions[0]["parameters"]["type"] == "dict"
    interval = simple[3].tools[0]["function"]["parameters"]["properties"]["interval"]
    assert interval == {"type": "array", "items": {"type": "number"}, "description": interval["description"]}
    irrelevance = load_bfcl(BFCL / "BFCL_v4_irrelevance.json")
    assert [c.category for c in irrelevance] == ["irrelevance"] * 4
    assert not any(c.expects_call for c in irrelevance)
    assert load_cases(str(BFCL / "BFCL_v4_irrelevance.json"), max_cases=2)[1].id == "irrelevance_1"


def test_bfcl_loader_errors(tmp_path: Path) -> None:
    question = tmp_path / "BFCL_v4_simple_python.json"
    question.write_text((BFCL / "BFCL_v4_simple_python.json").read_text())
    with pytest.raises(CaseError, match="possible_answer"):
        load_bfcl(question)
    answers = tmp_path / "answers.json"
    answers.write_text('{"id": "simple_python_0", "ground_truth": [{"calculate_triangle_area": {"base": [10]}}]}\n')
    with pytest.raises(CaseError, match=r"record 1 \(simple_python_2\): no ground truth"):
        load_bfcl(question, answers)
    multi = tmp_path / "BFCL_v4_multi_turn_base.json"
    multi.write_text('{"id": "multi_turn_base_0", "question": [[{"role": "user", "content": "x"}]], "function": []}\n')
    with pytest.raises(CaseError, match="not supported"):
        load_bfcl(multi, answers)
    with pytest.raises(CaseError, match="split val"):
        load_cases(str(BFCL / "BFCL_v4_irrelevance.json"), split="val")


def test_bfcl_categories() -> None:
    assert bfcl_category("simple_python_12") == "simple"
    assert bfcl_category("parallel_multiple_3") == "parallel_multiple"
    assert bfcl_category("live_multiple_3-1-0") == "live_multiple"
    assert bfcl_category("irrelevance_7") == "irrelevance"


def test_cases_from_conversations_rejects_a_leading_assistant_turn() -> None:
    from tooltune.conversation import Conversation, Message

    conv = Conversation(messages=[Message("assistant", "hi")], source="x.json", index=3)
    with pytest.raises(CaseError, match="x.json record 3"):
        cases_from_conversations([conv])


@pytest.mark.parametrize(
    ("hits", "n", "low", "high"),
    [
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
        (1, 1, 0.2065, 1.0),
    ],
)
def test_wilson_interval_known_values(hits: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(hits, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_rate_counts_only_applicable_outcomes() -> None:
    r = rate([True, False, None, True, None])
    assert (r.hits, r.n, r.value) == (2, 3, pytest.approx(2 / 3))
    assert rate([]).n == 0 and rate([]).value is None
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([], 50) is None
