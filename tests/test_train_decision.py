"""``decision_weight``: the loss weighs the token trained right after each call's closing marker — the one that picks
another call or the end of the turn — on the templates whose calls close with a marker; elsewhere, or on data with no
trained call, it is refused with the reason rather than silently doing nothing."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from tooltune.args import parse_into
from tooltune.data import DataArguments
from tooltune.templates import get_template
from tooltune.train.args import FinetuningArguments, ModelArguments, TrainArguments, TrainConfigError, validate
from tooltune.train.data import PreparedData, TrainDataError, decision_marker, prepare_data
from tooltune.train.loss import decision_token_weights, next_token_targets

WEATHER = {"name": "get_weather", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _call(*cities: str) -> str:
    calls = [{"name": "get_weather", "arguments": {"city": city}} for city in cities]
    return json.dumps(calls if len(calls) > 1 else calls[0])


SINGLE = [{"from": "human", "value": "Weather in Paris?"}, {"from": "function_call", "value": _call("Paris")},
          {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny in Paris."}]
PARALLEL = [{"from": "human", "value": "Paris and Rome, please"},
            {"from": "function_call", "value": _call("Paris", "Rome")}]
TEXT = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello! Ask me about the weather."}]


def _data(tmp_path, tokenizer, conversations) -> PreparedData:
    path = tmp_path / "calls.json"
    path.write_text(json.dumps([{"conversations": c, "tools": json.dumps([WEATHER])} for c in conversations]))
    return prepare_data(DataArguments(dataset=str(path), template="qwen", cutoff_len=1024), tokenizer)


@pytest.mark.parametrize("tokenizer_fixture", ["qwen_tokenizer_dir", "smollm2_tokenizer_dir"])
def test_the_weighted_token_follows_each_trained_call(tmp_path, request, tokenizer_fixture):
    # Qwen2.5 has </tool_call> as one special token; SmolLM2 splits it into five. Either way the marker is found
    # once per call: the single call's close is followed by <|im_end|>, the parallel reply's first by "\n" (the next
    # call) and its second by <|im_end|>.
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(tokenizer_fixture))
    data = _data(tmp_path, tokenizer, [SINGLE, PARALLEL, TEXT])
    marker, found = decision_marker(data, tokenizer, 5.0, "qwen")
    assert tokenizer.decode(marker) == "</tool_call>" and found == 3
    followers = []
    for sample in data.train:
        labels = torch.tensor([list(sample.labels)])
        weights = decision_token_weights(labels, marker, 5.0)
        _, targets = next_token_targets(labels)
        followers += [tokenizer.decode([t]) for t in targets[weights == 5.0].tolist()]
    assert sorted(followers) == sorted(["<|im_end|>", "\n", "<|im_end|>"])


def test_decision_weight_is_refused_where_it_could_not_apply(tmp_path, qwen_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    no_calls = _data(tmp_path, tokenizer, [TEXT, TEXT])
    with pytest.raises(TrainDataError, match=r"--decision_weight 5: no trained token follows </tool_call>"):
        decision_marker(no_calls, tokenizer, 5.0, "qwen")
    # Mistral and Phi-4-mini write every call of a reply in one JSON list: no marker closes a single call.
    for listed in ("mistral", "phi4-mini"):
        assert get_template(listed, tokenizer).call_close is None
    calls = _data(tmp_path, tokenizer, [SINGLE])
    calls.call_close = None
    with pytest.raises(TrainDataError, match=r"--template mistral writes tool calls without a closing marker"):
        decision_marker(calls, tokenizer, 3.0, "mistral")
    for hermes in ("qwen3", "smollm3", "jinja"):
        assert get_template(hermes, tokenizer).call_close == "</tool_call>"
    assert get_template("qwen", tokenizer, tool_view="ollama").call_close == "</tool_call>"
    with pytest.raises(TrainConfigError, match="--decision_weight must be > 0"):
        validate(FinetuningArguments(), TrainArguments(decision_weight=0))


def test_decision_weight_flag_spellings():
    classes = (ModelArguments, DataArguments, FinetuningArguments, TrainArguments)
    for flag in ("--decision_weight", "--decision-weight"):
        *_, training = parse_into(classes, ["--output_dir", "out", flag, "4"])
        assert training.decision_weight == 4.0
