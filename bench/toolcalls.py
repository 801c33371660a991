"""Streaming tool-call parsing: ``StreamingToolCallParser`` vs re-parsing the accumulated text on every delta.

Re-parsing everything received so far on each new token is the simple way to stream tool calls (and what a server
without an incremental parser does); its cost grows with the square of the response length. Both run in this process
on the same responses and must produce the same calls. Prints seconds per response and the ratio.

    python bench/toolcalls.py [--calls 8] [--arg-chars 400] [--chunk 4] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from tooltune.toolcalls import StreamingToolCallParser, ToolCallDone, parse_tool_calls


def make_response(calls: int, arg_chars: int) -> str:
    """A Qwen-style response: a sentence, then ``calls`` blocks whose string argument is ``arg_chars`` long."""
    text = "Let me look that up for you.\n"
    for index in range(calls):
        body = {"name": "search_docs", "arguments": {"query": ("tool </tool_call> " * arg_chars)[:arg_chars],
                                                     "page": index}}  # fmt: skip
        text += f"<tool_call>\n{json.dumps(body)}\n</tool_call>\n"
    return text


def chunks_of(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def incremental(pieces: list[str]) -> int:
    parser = StreamingToolCallParser(tools=["search_docs"])
    found = 0
    for piece in pieces:
        found += sum(isinstance(e, ToolCallDone) for e in parser.feed(piece))
    found += sum(isinstance(e, ToolCallDone) for e in parser.finish())
    return found


def reparse_every_delta(pieces: list[str]) -> int:
    received = ""
    found = 0
    for piece in pieces:
        received += piece
        found = len(parse_tool_calls(received, tools=["search_docs"]).calls)
    return found


def timed(fn, pieces: list[str], runs: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    seconds, result = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        result = fn(pieces)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--arg-chars", type=int, default=400)
    parser.add_argument("--chunk", type=int, default=4, help="characters per streamed delta (~1 token)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    text = make_response(args.calls, args.arg_chars)
    pieces = chunks_of(text, args.chunk)
    ours, ours_calls = timed(incremental, pieces, args.runs)
    base, base_calls = timed(reparse_every_delta, pieces, args.runs)
    assert ours_calls == base_calls == args.calls, (ours_calls, base_calls)
    print(f"response: {len(text)} chars in {len(pieces)} deltas of {args.chunk}, {args.calls} calls")
    print(f"incremental parser:     {1000 * ours:8.2f} ms")
    print(f"re-parse on each delta: {1000 * base:8.2f} ms")
    per_delta = f"{1e6 * ours / len(pieces):.1f} µs vs {1e6 * base / len(pieces):.1f} µs"
    print(f"speed-up: {base / ours:.1f}x  (per delta: {per_delta})")


if __name__ == "__main__":
    main()
