"""``tooltune synth`` offline: plan arithmetic, every pattern verified, the held-out split, every rejection reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tooltune.synth import load_spec, prepare, synthesize, write_outputs
from tooltune.synth.build import split_held_out
from tooltune.synth.offline import Sample
from tooltune.synth.plan import PlanItem
from tooltune.synth.spec import SynthError, spec_from_mapping
from tooltune.synth.verify import REASONS, Verifier, user_requests

SEED_SPEC = Path(__file__).parent.parent / "src" / "tooltune" / "resources" / "examples" / "seed_tools" / "synth.yaml"

LAMP = {"type": "function", "function": {"name": "set_lamp", "description": "Switch a lamp", "parameters": {
    "type": "object",
    "properties": {"room": {"type": "string"}, "mode": {"type": "string", "enum": ["on", "off", "dim"]},
                   "minutes": {"type": "integer", "minimum": 1}},
    "required": ["room", "mode"]}}}
NOTE = {"name": "add_note", "description": "Save a note", "parameters": [
    {"name": "text", "description": "the note", "required": True}]}
ASK = {"name": "ask_anything", "description": "fallback", "parameters": [{"name": "question", "required": True}]}


def _small_spec(**extra: object):
    raw = {
        "tools": [LAMP, NOTE, ASK],
        "fallback_tool": "ask_anything",
        "languages": ["en", "zh"],
        "counts": {"single": 2, "clarify": 2, "result": 1, "parallel": 3, "no_call": 4},
        "arguments": {"set_lamp": {"room": {"values": {"en": ["kitchen", "hall"], "zh": ["厨房", "客厅"]}},
                                   "minutes": {"values": ["5", "10"]}},
                      "add_note": {"text": {"values": {"en": ["buy milk", "call mum"],
                                                       "zh": ["买牛奶", "给妈妈打电话"]}}}},
        "templates": {"set_lamp": {"en": ["turn the {room} lamp {mode}",
                                          "{mode} the {room} lamp for {minutes} minutes"],
                                   "zh": ["把{room}的灯{mode}", "{room}的灯{mode}{minutes}分钟"]},
                      "add_note": {"en": ["note: {text}"], "zh": ["记一下：{text}"]}},
        **extra,
    }
    return spec_from_mapping(raw, base_dir=Path("."), source="small.yaml")


def test_plan_arithmetic() -> None:
    spec = _small_spec()
    plan, _ = prepare(spec)
    counts = plan.counts()
    for lang in ("en", "zh"):
        # single: max(counts.single=2, largest enum=3, two slot sets) = 3; result: 1
        assert counts[("set_lamp", "single", lang)] == 3
        assert counts[("add_note", "single", lang)] == 2
        assert counts[("set_lamp", "result", lang)] == counts[("add_note", "result", lang)] == 1
        # clarify: only add_note has a required free-text argument with an opener ("note" / "记一下")
        assert counts[("add_note", "clarify", lang)] == 2 and counts[("set_lamp", "clarify", lang)] == 0
        # parallel: one pair of callable tools × 3; the fallback takes the no-call turns
        assert counts[("set_lamp+add_note", "parallel", lang)] == 3
        assert counts[("ask_anything", "no_call", lang)] == 4
    assert len(plan.items) == 2 * (3 + 2 + 1 + 1 + 2 + 3 + 4)
    assert any("set_lamp" in gap and "room" in gap for gap in plan.gaps)  # no opener without {room}
    text = plan.format(spec.languages)
    assert "single/en" in text and "total" in text.splitlines()[-len(plan.gaps) - 1]
    # tool_counts: per-tool overrides; the enum floor stays (each value appears), a pair takes the smaller parallel
    plan, _ = prepare(_small_spec(tool_counts={"add_note": {"single": 5, "result": 0, "parallel": 1},
                                               "set_lamp": {"single": 1, "clarify": 7}}))
    counts = plan.counts()
    assert counts[("add_note", "single", "en")] == 5 and counts[("add_note", "result", "en")] == 0
    assert counts[("set_lamp", "single", "en")] == 3  # largest enum (on, off, dim) still all appear
    assert counts[("set_lamp", "result", "en")] == 1 and counts[("set_lamp+add_note", "parallel", "en")] == 1
    assert counts[("ask_anything", "no_call", "en")] == 4
    with pytest.raises(SynthError, match=r"tool_counts\.nope: no such tool"):
        _small_spec(tool_counts={"nope": {"single": 1}})
    with pytest.raises(SynthError, match=r"tool_counts\.add_note must map clarify, parallel, result, single"):
        _small_spec(tool_counts={"add_note": {"no_call": 1}})
    # A tool without any template is a gap, not a silent omission.
    bare = spec_from_mapping({"tools": [NOTE]}, base_dir=Path("."), source="bare.yaml")
    plan, _ = prepare(bare)
    assert not [i for i in plan.items if i.tool == "add_note"] and "add_note (en): no template" in plan.gaps[0]


def test_every_pattern_is_generated_and_verified_seed_tools(tmp_path: Path) -> None:
    spec = load_spec(SEED_SPEC)
    plan, offline = prepare(spec)
    result = synthesize(spec, plan, offline=offline)
    verifier = Verifier(spec)
    kept = result.train + result.test
    assert all(verifier.check(s.record) is None for s in kept)
    patterns = {(s.item.pattern, s.item.language) for s in result.train}
    for lang in ("zh", "en"):
        for pattern in ("single", "clarify", "result", "parallel", "no_call", "example"):
            assert (pattern, lang) in patterns, (pattern, lang)
    # every enum value of every tool appears in a call, and held-out cases cover every pattern too
    calls = [json.loads(t["value"]) for s in kept for t in s.turns if t["from"] == "function_call"]
    flat = [c for call in calls for c in (call if isinstance(call, list) else [call])]
    for tool in spec.tools:
        for arg, values in tool.arguments.items():
            seen = {c["arguments"][arg] for c in flat if c["name"] == tool.name and arg in c["arguments"]}
            assert set(values.enum) <= seen, (tool.name, arg)
    assert {s.item.pattern for s in result.test} == {"single", "clarify", "result", "parallel", "no_call"}
    # generated calls write their arguments in the order the tool's schema lists them (the hand-written examples
    # keep the user's order): alphabetical calls taught the model to open with `content` and drop the rest
    schema_order = {tool.name: list(tool.schema["properties"]) for tool in spec.tools}
    generated = [json.loads(t["value"]) for s in kept if s.item.pattern != "example" for t in s.turns
                 if t["from"] == "function_call"]
    checked = 0
    for call in (c for value in generated for c in (value if isinstance(value, list) else [value])):
        keys = list(call["arguments"])
        assert keys == sorted(keys, key=schema_order[call["name"]].index), call
        checked += len(keys) > 1
    assert checked > 20
    # clarification dialogues: user opener → assistant asks → user gives the value → call with it
    clarify = next(s for s in result.train if s.item.pattern == "clarify" and s.item.tool == "HandleTongzhiTonggao")
    roles = [t["from"] for t in clarify.turns]
    assert roles == ["human", "gpt", "human", "function_call"]
    assert json.loads(clarify.turns[3]["value"])["arguments"]["content"] == clarify.turns[2]["value"]
    # no-call turns go to the marked fallback with the user's words
    no_call = next(s for s in result.train if s.item.pattern == "no_call")
    call = json.loads(no_call.turns[1]["value"])
    assert call == {"name": "DirectLLMCommunityAiUser", "arguments": {"question": no_call.turns[0]["value"]}}
    # held-out and training share no user utterance
    heard_in_test = set().union(*(user_requests(s.record) for s in result.test))
    assert all(not (user_requests(s.record) & heard_in_test) for s in result.train)
    # deterministic
    again = synthesize(spec, *[prepare(spec)[0]], offline=prepare(spec)[1])
    assert [s.record for s in again.train] == [s.record for s in result.train]


def test_offline_repeats_are_drawn_again_until_a_bucket_runs_out() -> None:
    # WaterMachineApi in Chinese: 7 values x 2 phrasings x 4 templates (3 in the spec, and the bare request its
    # examples teach) = 56 distinct requests. Asking for exactly 56 gives all of them (first draws alone repeat ~24);
    # asking for 70 gives the same 56 and rejects the 14 left over as duplicates, saying they were drawn again.
    def water(count: int, redraws: int = 50):
        spec = load_spec(SEED_SPEC, {"languages": ["zh"], "test_size": 0, "redraws": redraws, "counts": {
            "single": 0, "clarify": 0, "result": 0, "parallel": 0, "no_call": 0},
            "tool_counts": {"WaterMachineApi": {"single": count}}})
        plan, offline = prepare(spec)
        plan.items = [i for i in plan.items if (i.tool, i.pattern) == ("WaterMachineApi", "single")]
        return synthesize(spec, plan, offline=offline)

    exact = water(56)
    requests = {s.turns[0]["value"] for s in exact.train}
    assert len(exact.train) == 56 and len(requests) == 56 and not exact.rejected
    assert exact.redrawn > 0 and f"{exact.redrawn} drawn again" in exact.summary()
    more = water(70)
    assert {s.turns[0]["value"] for s in more.train} == requests
    assert [r.rejection.reason for r in more.rejected] == ["duplicate"] * 14
    assert "in 50 draws again" in more.rejected[0].rejection.detail
    # redraws: 0 keeps the first draws and rejects each repeat at once (the seed-tools demo's measured data)
    first = water(56, redraws=0)
    assert first.redrawn == 0 and len(first.train) + len(first.rejected) == 56 and len(first.train) < 56
    assert {r.rejection.detail for r in first.rejected} == {"same turns as an earlier sample"}
    with pytest.raises(SynthError, match="redraws must be a whole number"):
        _small_spec(redraws=-1)


def test_outputs_load_as_a_dataset_and_as_eval_cases(tmp_path: Path) -> None:
    from tooltune.data.args import DataArguments
    from tooltune.data.loader import load_conversations
    from tooltune.eval.cases import load_cases

    spec = _small_spec()
    plan, offline = prepare(spec)
    result = synthesize(spec, plan, offline=offline)
    files = write_outputs(spec, result, tmp_path)
    info = json.loads(files["dataset_info"].read_text(encoding="utf-8"))
    assert info["synth"]["file_name"] == "synth.json" and info["synth_test"]["file_name"] == "synth_test.json"
    report = load_conversations(DataArguments(dataset="synth", dataset_dir=str(tmp_path)))
    assert not report.rejected and len(report.conversations) == len(result.train)
    cases = load_cases("synth_test", dataset_dir=str(tmp_path))
    categories = {c.category for c in cases}
    assert "no_call" in categories or any(c.expected_calls[0].name == "ask_anything" for c in cases if c.expected_calls)
    assert {"multiple", "parallel_multiple"} <= categories
    data = json.loads(files["report_json"].read_text(encoding="utf-8"))
    row = next(r for r in data["rows"]
               if r["tool"] == "set_lamp" and r["pattern"] == "single" and r["language"] == "en")
    assert row["planned"] == 3 and row["train"] + row["test"] + row["rejected"] == 3
    assert "| set_lamp | single | en |" in files["report_md"].read_text(encoding="utf-8")


def _record(*turns: tuple[str, object]) -> dict:
    return {"conversations": [{"from": role, "value": value if isinstance(value, str) else json.dumps(value)}
                              for role, value in turns]}


def test_every_rejection_reason_from_a_crafted_sample() -> None:
    spec = _small_spec()
    verifier = Verifier(spec)
    lamp = {"name": "set_lamp", "arguments": {"room": "kitchen", "mode": "on"}}
    assert verifier.check(_record(("human", "turn the kitchen lamp on"), ("function_call", lamp))) is None
    crafted = {
        "malformed": _record(("gpt", "hi"), ("human", "hello")),
        "unknown_tool": _record(("human", "x"), ("function_call", {"name": "nope", "arguments": {}})),
        "missing_required": _record(("human", "kitchen"), ("function_call",
                                                           {"name": "set_lamp", "arguments": {"room": "kitchen"}})),
        "wrong_type": _record(("human", "kitchen lamp on for 5"), ("function_call", {
            "name": "set_lamp", "arguments": {"room": "kitchen", "mode": "on", "minutes": "5"}})),
        "not_in_enum": _record(("human", "kitchen blink"), ("function_call", {
            "name": "set_lamp", "arguments": {"room": "kitchen", "mode": "blink"}})),
        "unknown_argument": _record(("human", "kitchen on red"), ("function_call", {
            "name": "set_lamp", "arguments": {"room": "kitchen", "mode": "on", "colour": "red"}})),
        "ungrounded": _record(("human", "turn the lamp on"), ("function_call", lamp)),
        "schema": _record(("human", "kitchen on for 0"), ("function_call", {
            "name": "set_lamp", "arguments": {"room": "kitchen", "mode": "on", "minutes": 0}})),
    }
    for reason, record in crafted.items():
        rejection = verifier.check(record)
        assert rejection is not None and rejection.reason == reason, (reason, rejection)
        assert rejection.detail
    # grounding is configurable
    assert Verifier(_small_spec(grounding="off")).check(crafted["ungrounded"]) is None
    # duplicate (same turns modulo case/punctuation) and test_overlap come from synthesize / the split
    twice = _record(("human", "Turn the kitchen lamp ON!"), ("function_call", lamp))
    records = {"a": _record(("human", "turn the kitchen lamp on"), ("function_call", lamp)), "b": twice}
    plan, offline = prepare(spec)
    items = [PlanItem("set_lamp", "single", "en", 0), PlanItem("set_lamp", "single", "en", 1)]
    plan.items = items
    result = synthesize(spec, plan, generate=lambda item: records["a" if item.index == 0 else "b"], offline=offline)
    assert [r.rejection.reason for r in result.rejected] == ["duplicate"]
    samples = [Sample(PlanItem("add_note", "single", "en", i), _record(("human", text), ("function_call", {
        "name": "add_note", "arguments": {"text": "buy milk"}}))) for i, text in
        enumerate(["note: buy milk", "note buy milk", "please note: buy milk", "buy milk"])]
    train, test, overlap = split_held_out(samples, 0.25, seed=0)
    assert len(test) == 1 and len(train) + len(overlap) == 3
    assert all(r.rejection.reason == "test_overlap" for r in overlap)
    # nor do two held-out samples share a request (it would be scored twice)
    repeated = [Sample(PlanItem("add_note", pattern, "en", 0), _record(("human", "note: buy milk"), ("function_call", {
        "name": "add_note", "arguments": {"text": "buy milk"}}))) for pattern in ("single", "result") for _ in (0, 1)]
    for i, sample in enumerate(repeated):
        sample.item = PlanItem("add_note", sample.item.pattern, "en", i)
    train, test, overlap = split_held_out(repeated, 0.5, seed=0)
    assert not train and len(test) == 1 and {r.rejection.reason for r in overlap} == {"test_overlap"}
    assert sum("another held-out sample" in r.rejection.detail for r in overlap) == 1
    # a request trained inside a parallel turn is not held out as a single call, nor the reverse: whichever single and
    # whichever parallel turn the draw holds out, the other two hold one of its requests
    lamp_on = {"name": "set_lamp", "arguments": {"room": "kitchen", "mode": "on"}}
    lamp_off = {"name": "set_lamp", "arguments": {"room": "hall", "mode": "off"}}
    singles = [Sample(PlanItem("set_lamp", "single", "en", i), _record(("human", text), ("function_call", call)))
               for i, (text, call) in enumerate([("turn the kitchen lamp on", lamp_on),
                                                 ("turn the hall lamp off", lamp_off)])]
    parallels = [Sample(PlanItem("add_note+set_lamp", "parallel", "en", i), _record(
        ("human", f"note: {note}, and also turn the kitchen lamp on, and also turn the hall lamp off"),
        ("function_call", [{"name": "add_note", "arguments": {"text": note}}, lamp_on, lamp_off])))
        for i, note in enumerate(["buy milk", "call mom"])]
    train, test, overlap = split_held_out(singles + parallels, 0.5, seed=0)
    # one of each bucket: a parallel request and a single call of one of its requests are both tested
    assert sorted(s.item.pattern for s in test) == ["parallel", "single"]
    assert not train and len(overlap) == 2  # every whole turn differs: only the requests inside them overlap
    assert all(r.rejection.reason == "test_overlap" and "as a held-out sample does" in r.rejection.detail
               for r in overlap)
    asked_in_test = set().union(*(user_requests(s.record) for s in test))
    assert {"turnthekitchenlampon", "turnthehalllampoff"} <= asked_in_test
    # generation: a template slot with no values anywhere
    gap = _small_spec(templates={"add_note": {"en": ["note: {text}"], "zh": ["记一下：{text}"]},
                                 "set_lamp": {"en": ["{room} lamp {mode}"], "zh": ["{room}灯{mode}"]}},
                      arguments={"add_note": {"text": {"values": ["x"]}}})
    plan, offline = prepare(gap)
    result = synthesize(gap, plan, offline=offline)
    assert any(r.rejection.reason == "generation" and "set_lamp.room" in r.rejection.detail for r in result.rejected)
    produced = {r.rejection.reason for r in result.rejected} | set(crafted) | {"duplicate", "test_overlap"}
    assert produced == set(REASONS)


def test_bad_specs_name_the_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match="small.yaml: fallback_tool 'nope'"):
        _small_spec(fallback_tool="nope")
    with pytest.raises(SynthError, match=r"arguments\.set_lamp\.colour: the tool has no argument"):
        _small_spec(arguments={"set_lamp": {"colour": {"values": ["red"]}}})
    with pytest.raises(SynthError, match="languages fr"):
        _small_spec(languages=["fr"])
    with pytest.raises(SynthError, match="unknown key"):
        _small_spec(colours=1)
    bad = tmp_path / "spec.yaml"
    bad.write_text("tools: missing.json\n")
    with pytest.raises(SynthError, match="missing.json: cannot read the tools file"):
        load_spec(bad)


def test_cli_writes_dataset_plan_and_report(tmp_path: Path) -> None:
    from tooltune.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["synth", str(SEED_SPEC), "--out", str(out), "--languages", "zh"])
    assert result.exit_code == 0, result.output
    assert "single/zh" in result.output and "synth:" in result.output  # plan printed, then the summary line
    assert "single/en" not in result.output
    for name in ("seed_tools.json", "seed_tools_test.json", "dataset_info.json", "rejected.jsonl", "report.md"):
        assert (out / name).is_file(), name
    for line in (out / "rejected.jsonl").read_text(encoding="utf-8").splitlines():
        assert json.loads(line)["reason"] in REASONS


def test_distractors_offer_called_tools_fallback_and_n_others() -> None:
    spec = load_spec(SEED_SPEC, {"distractors": 1, "languages": ["zh"]})
    plan, offline = prepare(spec)
    result = synthesize(spec, plan, offline=offline)
    for sample in result.train + result.test:
        offered = {t["name"] for t in json.loads(sample.record["tools"])}
        called = {c["name"] for t in sample.turns if t["from"] == "function_call"
                  for c in (lambda v: v if isinstance(v, list) else [v])(json.loads(t["value"]))}
        assert called | {"DirectLLMCommunityAiUser"} <= offered
        assert len(offered) == len(called | {"DirectLLMCommunityAiUser"}) + 1
    # a call to a tool the sample does not offer is rejected, even though the spec has it
    record = dict(result.train[0].record)
    record["tools"] = json.dumps([t for t in spec.raw_tools if t["name"] == "WeatherApi"], ensure_ascii=False)
    record["conversations"] = [{"from": "human", "value": "讲个笑话吧"}, {"from": "function_call", "value": json.dumps(
        {"name": "DirectLLMCommunityAiUser", "arguments": {"question": "讲个笑话吧"}}, ensure_ascii=False)}]
    assert Verifier(spec).check(record).reason == "unknown_tool"


def test_tool_shape_offers_openai_schemas_with_the_spec_enums() -> None:
    def shapes(spec) -> list[str]:
        plan, offline = prepare(spec)
        result = synthesize(spec, plan, offline=offline)
        assert not [r for r in result.rejected if r.rejection.reason not in ("duplicate", "test_overlap")]
        found = []
        for sample in result.train + result.test:
            for tool in json.loads(sample.record["tools"]):
                if "function" in tool:
                    schema = tool["function"]["parameters"]
                    assert schema["type"] == "object" and "additionalProperties" not in schema
                    if tool["function"]["name"] == "HandleTongzhiTonggao":
                        assert schema["properties"]["operation"]["enum"] == ["ADD", "DELETE", "UPDATE", "LIST"]
                        assert schema["required"] == ["operation", "type", "content"]
                    found.append("openai")
                else:
                    assert isinstance(tool["parameters"], list)  # the seed's list shape, as written
                    found.append("as_given")
        return found

    assert set(shapes(load_spec(SEED_SPEC, {"languages": ["zh"], "distractors": 0}))) == {"as_given"}
    assert set(shapes(load_spec(SEED_SPEC, {"languages": ["zh"], "tool_shape": "openai"}))) == {"openai"}
    mixed = shapes(load_spec(SEED_SPEC, {"languages": ["zh"], "distractors": 0, "tool_shape": "mixed"}))
    assert 0.25 < mixed.count("openai") / len(mixed) < 0.75
    with pytest.raises(SynthError, match="tool_shape 'xml' must be one of as_given, openai, mixed"):
        spec_from_mapping({"tools": [NOTE], "tool_shape": "xml"}, base_dir=Path("."), source="small.yaml")


def test_pipeline_synth_block_fills_the_dataset(tmp_path: Path) -> None:
    from rich.console import Console

    from tooltune.commands.demo import _pop_example, demo_config_path
    from tooltune.pipeline.config import load_pipeline_config
    from tooltune.synth.pipeline import apply_synth

    config = load_pipeline_config([str(demo_config_path("seed-tools")), "--run_dir", str(tmp_path / "run")])
    assert config.pipeline.synth["spec"].endswith("synth.yaml") and not config.data.dataset
    apply_synth(config, Console(quiet=True))
    assert config.data.dataset == "seed_tools" and config.pipeline.eval_dataset == "seed_tools_test"
    assert Path(config.data.dataset_dir) == tmp_path / "run" / "synth"
    assert (tmp_path / "run" / "synth" / "seed_tools_test.json").is_file()
    argv = ["--example", "seed-tools", "--max_steps", "2"]
    assert _pop_example(argv) == "seed-tools" and argv == ["--max_steps", "2"]
