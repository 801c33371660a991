"""Masking, the two cutoff policies, history masking, train_on_prompt, packing and shared prompt prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tooltune.conversation import Conversation, Message
from tooltune.data import DataArguments, load_conversations, load_tokenizer
from tooltune.encode import (
    IGNORE_INDEX,
    EncodeError,
    encode_conversation,
    encode_dataset,
    encode_turns,
    infer_seqlen,
    pack_samples,
    share_prefixes,
    shareable_length,
)
from tooltune.templates import get_template


@pytest.fixture(scope="module")
def tok(qwen_tokenizer_dir: Path):
    return load_tokenizer(qwen_tokenizer_dir)


@pytest.fixture(scope="module")
def qwen(tok):
    return get_template("qwen", tok)


@pytest.fixture(scope="module")
def glaive() -> list[Conversation]:
    return load_conversations(DataArguments(dataset="glaive_toolcall_en_demo")).conversations


def trained_ids(sample) -> list[int]:
    return [t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label != IGNORE_INDEX]


def test_infer_seqlen_matches_llamafactory_arithmetic() -> None:
    assert infer_seqlen(100, 10, 512) == (100, 10)  # fits
    assert infer_seqlen(1000, 100, 512) == (412, 100)  # short target: cut the source
    assert infer_seqlen(100, 1000, 512) == (100, 412)  # short source: cut the target
    assert infer_seqlen(600, 400, 512) == (308, 204)  # both long: proportional


def test_lf_policy_can_cut_a_tool_call_and_safe_never_does(tok, qwen, glaive) -> None:
    start, end = tok.convert_tokens_to_ids("<tool_call>"), tok.convert_tokens_to_ids("</tool_call>")
    im_end, newline = tok.convert_tokens_to_ids("<|im_end|>"), tok.encode("\n")[0]
    lf = encode_dataset(glaive, qwen, cutoff_len=512, policy="lf")
    cut_calls = [s for s in lf.samples if trained_ids(s).count(start) != trained_ids(s).count(end)]
    assert cut_calls, "LLaMA-Factory's truncation is expected to cut some tool call at 512"

    safe = encode_dataset(glaive, qwen, cutoff_len=512, policy="safe")
    assert len(safe.samples) + len(safe.skipped) == 300
    for sample in safe.samples:
        assert len(sample.input_ids) <= 512
        trained = trained_ids(sample)
        assert trained.count(start) == trained.count(end)
        assert trained[-2:] == [im_end, newline]  # ends on a whole response
        if sample.truncated:
            assert sample.kept_turns < sample.turns
    for skipped in safe.skipped:
        assert "first turn alone is" in skipped.reason and "over cutoff_len 512" in skipped.reason
        assert skipped.source.endswith("glaive_toolcall_en_demo.json") and skipped.record is not None
    # Same samples as no cutoff when nothing is dropped.
    full = encode_dataset(glaive, qwen, cutoff_len=100_000, policy="safe")
    kept = {s.position: s for s in safe.samples if not s.truncated}
    for sample in full.samples:
        if sample.position in kept:
            assert kept[sample.position].input_ids == sample.input_ids


def test_safe_policy_drops_trailing_turns_whole(qwen, glaive) -> None:
    conv = glaive[0]  # four assistant turns
    full = encode_conversation(conv, qwen, cutoff_len=100_000)
    turns = qwen.encode_turns([conv])[0]
    two_turns = sum(len(s) + len(t) for s, t in turns[:2])
    sample = encode_conversation(conv, qwen, cutoff_len=two_turns + 5)
    assert sample.kept_turns == 2 and sample.truncated and sample.input_ids == full.input_ids[:two_turns]
    with pytest.raises(EncodeError, match="first turn alone is"):
        encode_conversation(conv, qwen, cutoff_len=20)


def test_train_on_prompt_and_mask_history(tok, qwen, glaive) -> None:
    conv = glaive[0]
    everything = encode_conversation(conv, qwen, train_on_prompt=True)
    assert everything.labels == everything.input_ids
    for policy in ("lf", "safe"):
        last_only = encode_conversation(conv, qwen, policy=policy, mask_history=True)
        normal = encode_conversation(conv, qwen, policy=policy)
        assert last_only.input_ids == normal.input_ids
        last_response = qwen.encode_turns([conv])[0][-1][1]
        assert trained_ids(last_only) == last_response


def test_lf_mask_history_keeps_the_last_turns_under_cutoff(qwen, glaive) -> None:
    conv = glaive[0]
    turns = qwen.encode_turns([conv])[0]
    sample = encode_turns(turns, cutoff_len=len(turns[-1][0]) + len(turns[-1][1]), policy="lf", mask_history=True)
    assert sample.input_ids == turns[-1][0] + turns[-1][1]


def test_packing_keeps_every_sample_with_its_own_positions(qwen, glaive) -> None:
    report = encode_dataset(glaive[:60], qwen, cutoff_len=2048, packing=True)
    blocks = report.blocks
    assert blocks is not None and len(blocks) < len(report.samples)
    by_position = {s.position: s for s in report.samples}
    seen = []
    for block in blocks:
        assert len(block.input_ids) <= 2048
        assert len(block.input_ids) == len(block.labels) == len(block.position_ids)
        offset = 0
        for position in block.sample_positions:
            sample = by_position[position]
            n = len(sample.input_ids)
            assert block.input_ids[offset : offset + n] == sample.input_ids
            assert block.labels[offset : offset + n] == sample.labels
            assert block.position_ids[offset : offset + n] == list(range(n))
            assert set(block.segment_ids[offset : offset + n]) == {block.sample_positions.index(position) + 1}
            offset += n
        seen += block.sample_positions
    assert sorted(seen) == sorted(by_position)
    assert pack_samples(report.samples, 2048)[0].input_ids == blocks[0].input_ids  # deterministic


def test_report_figures(qwen, glaive) -> None:
    report = encode_dataset(glaive[:10], qwen, cutoff_len=2048)
    assert report.tokens == sum(len(s.input_ids) for s in report.samples)
    pct = report.length_percentiles()
    lengths = sorted(len(s.input_ids) for s in report.samples)
    assert pct[100] == lengths[-1] and pct[50] == lengths[4]
    assert report.summary().startswith(
        f"10 samples, 0 skipped; {report.tokens} tokens, {report.trained_tokens} trained"
    )


def test_bad_arguments(qwen, glaive) -> None:
    with pytest.raises(EncodeError, match="unknown cutoff policy"):
        encode_conversation(glaive[0], qwen, policy="middle")
    with pytest.raises(EncodeError, match="cutoff_len must be positive"):
        encode_conversation(glaive[0], qwen, cutoff_len=0)
    other = Conversation(messages=[Message("user", "x"), Message("user", "y"), Message("assistant", "z")])
    report = encode_dataset([other], qwen)
    assert "two prompt turns" in report.skipped[0].reason


def _same_tools(glaive: list[Conversation], count: int) -> list[Conversation]:
    """Conversations that offer the same tools as glaive's first call sample, each with its own request and call:
    what `tooltune synth` writes for one tool."""
    from dataclasses import replace

    base = next(c for c in glaive if c.tools and any(m.tool_calls for m in c.messages))
    call_turn = next(m for m in base.messages if m.tool_calls)
    out = []
    for n in range(count):
        arguments = call_turn.tool_calls[0].arguments
        varied = {key: f"{value} {n}" if isinstance(value, str) else value for key, value in arguments.items()}
        call = replace(call_turn.tool_calls[0], arguments=varied)
        out.append(Conversation([Message("user", f"request number {n}: " + "please " * n),
                                 Message("assistant", tool_calls=[call])], tools=base.tools, index=n))
    return out


def test_shared_prefix_rows_hold_every_sample_once_and_share_only_prompt(qwen, glaive) -> None:
    conversations = _same_tools(glaive, 7) + glaive[:12]
    report = encode_dataset(conversations, qwen, cutoff_len=1024, share_prefix=True)
    samples = {s.position: s for s in report.samples}
    assert report.shared_prefixes and report.blocks is not None
    seen = []
    shared_rows = 0
    for block in report.blocks:
        n = len(block.input_ids)
        assert n <= 1024 and n == len(block.labels) == len(block.position_ids) == len(block.segment_ids)
        prefix = block.shared_prefix
        assert block.segment_ids[:prefix] == [0] * prefix and block.labels[:prefix] == [IGNORE_INDEX] * prefix
        shared_rows += len(block.sample_positions) > 1
        offset = prefix
        for segment, position in enumerate(block.sample_positions, start=1):
            sample = samples[position]
            assert prefix <= shareable_length(sample) and sample.input_ids[:prefix] == block.input_ids[:prefix]
            rest = len(sample.input_ids) - prefix
            # The sample, whole: the shared prefix then its own tokens, labels and positions as if it stood alone.
            assert block.input_ids[offset : offset + rest] == sample.input_ids[prefix:]
            assert block.labels[offset : offset + rest] == sample.labels[prefix:]
            assert block.position_ids[offset : offset + rest] == list(range(prefix, len(sample.input_ids)))
            assert block.segment_ids[offset : offset + rest] == [segment] * rest
            assert block.labels[offset] == IGNORE_INDEX  # what ends the previous sample never predicts this one
            offset += rest
        seen += block.sample_positions
    assert sorted(seen) == sorted(samples)
    # The seven requests for the same tools share their system prompt and schemas: fewer tokens, same trained ones.
    assert shared_rows >= 1
    computed = sum(len(b.input_ids) for b in report.blocks)
    assert computed < report.tokens
    assert sum(1 for b in report.blocks for label in b.labels if label != IGNORE_INDEX) == report.trained_tokens
    assert "rows sharing prompt prefixes" in report.summary()


def test_shared_prefix_rows_stay_within_cutoff_and_keep_lone_samples_whole(qwen, glaive) -> None:
    conversations = _same_tools(glaive, 7)
    samples = encode_dataset(conversations, qwen, cutoff_len=1024).samples
    one = len(samples[0].input_ids)
    rows = share_prefixes(samples, cutoff_len=one + 40)  # room for a second sample's own tokens, not a third's
    assert all(len(b.input_ids) <= one + 40 for b in rows)
    assert sorted(p for b in rows for p in b.sample_positions) == list(range(7))
    # Nothing shared (every sample already trained from its first token): one sample per row, no prefix.
    trained_from_start = [type(s)(s.input_ids, list(s.input_ids), False, position=s.position) for s in samples]
    rows = share_prefixes(trained_from_start, cutoff_len=4096)
    assert [len(b.sample_positions) for b in rows] == [1] * 7 and all(b.shared_prefix == 0 for b in rows)
    with pytest.raises(EncodeError, match="do not fit"):
        share_prefixes(samples, cutoff_len=one - 1)
    with pytest.raises(EncodeError, match="exclude each other"):
        encode_dataset(conversations, qwen, packing=True, share_prefix=True)


def test_shared_prefix_rows_hold_at_most_the_samples_asked(qwen, glaive) -> None:
    # Seven requests for the same tools fit one 4096-token row; capped at 3 they take rows of 3, 3 and 1, each sharing
    # the prompt, and every sample is still in exactly one row.
    conversations = _same_tools(glaive, 7)
    whole = encode_dataset(conversations, qwen, cutoff_len=4096, share_prefix=True)
    assert [len(b.sample_positions) for b in whole.blocks] == [7]
    capped = encode_dataset(conversations, qwen, cutoff_len=4096, share_prefix=True, share_prefix_samples=3)
    assert [len(b.sample_positions) for b in capped.blocks] == [3, 3, 1]
    assert sorted(p for b in capped.blocks for p in b.sample_positions) == list(range(7))
    assert all(b.shared_prefix > 0 for b in capped.blocks[:2]) and capped.blocks[2].shared_prefix == 0
    assert "7 samples in 3 rows" in capped.summary()
    with pytest.raises(EncodeError, match="set --share_prefix true"):
        encode_dataset(conversations, qwen, share_prefix_samples=3)
    with pytest.raises(EncodeError, match="no limit"):
        encode_dataset(conversations, qwen, share_prefix=True, share_prefix_samples=-1)


def test_shared_prefix_rows_hold_at_most_the_trained_tokens_asked(qwen, glaive) -> None:
    # The cap counts trained tokens (labels), so a row holds as many short answers as fit under it, and a sample over
    # the cap sits alone rather than being dropped or cut.
    conversations = _same_tools(glaive, 7)
    samples = encode_dataset(conversations, qwen, cutoff_len=4096).samples
    each = [s.trained_tokens for s in samples]
    cap = sum(sorted(each)[:2]) + 1  # room for the two smallest answers, never for three
    report = encode_dataset(conversations, qwen, cutoff_len=4096, share_prefix=True, share_prefix_trained_tokens=cap)
    by_position = {s.position: s for s in report.samples}
    sizes = [len(b.sample_positions) for b in report.blocks]
    assert sorted(p for b in report.blocks for p in b.sample_positions) == list(range(7))
    assert max(sizes) == 2 and len(report.blocks) >= 4
    for block in report.blocks:
        trained = sum(1 for label in block.labels if label != IGNORE_INDEX)
        assert trained == sum(by_position[p].trained_tokens for p in block.sample_positions)
        assert trained <= cap or len(block.sample_positions) == 1
    alone = encode_dataset(conversations, qwen, cutoff_len=4096, share_prefix=True, share_prefix_trained_tokens=1)
    assert [len(b.sample_positions) for b in alone.blocks] == [1] * 7
    with pytest.raises(EncodeError, match="set --share_prefix true"):
        encode_dataset(conversations, qwen, share_prefix_trained_tokens=100)
    with pytest.raises(EncodeError, match="no limit"):
        encode_dataset(conversations, qwen, share_prefix=True, share_prefix_trained_tokens=-5)
