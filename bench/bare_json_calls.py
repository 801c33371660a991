"""Bare-JSON / ```json call fallback (``lenient``): calls recovered vs false calls on turns that need no call.

Issue 13 item 3: in ``tool_choice: auto`` a reply that is a bare JSON object or a ```json fence naming a known tool
with arguments that fit its schema may be taken as a call — on by default only if that costs nothing on no-call
turns. Two measurements, each parsed with the fallback off (strict) and on (lenient) from the same text:

1. reference text: every assistant turn of the demo data, the calls re-written bare / fenced instead of tagged
   (what an untuned model does) and the no-call replies as written;
2. model replies: the embedded default GGUF (SmolLM2-135M-Instruct, llama.cpp), no fine-tuning, prompts rendered
   with the bundled ``qwen`` template, greedy — one generation per turn, parsed both ways. Call turns count a call
   recovered when lenient finds the expected tool and strict does not; no-call turns (tools offered, the reference
   reply has no call: the irrelevance case) count a false call whenever a parse returns any call.

    nice -n 10 python bench/bare_json_calls.py [--datasets glaive_toolcall_en_demo,glaive_toolcall_zh_demo]
        [--call-turns 40] [--no-call-turns 60] [--max-tokens 96] [--model PATH.gguf]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from tooltune.eval.cases import Case, load_cases
from tooltune.families.parsers import parse_reply

DATA_DIR = Path(__file__).parents[1] / "src" / "tooltune" / "resources" / "data"


@dataclass
class Tally:
    turns: int = 0
    with_json: int = 0  # replies holding a '{', '[' or a ``` fence: what the fallback could possibly read
    strict_calls: int = 0  # turns where the strict parse returns a call (of the expected tool, on call turns)
    lenient_calls: int = 0

    def line(self, what: str) -> str:
        return (f"{what}: {self.turns} turns, {self.with_json} replies with JSON-ish text, "
                f"strict {self.strict_calls}, lenient {self.lenient_calls}")


def _has_json(text: str) -> bool:
    return any(mark in text for mark in ("{", "[", "```"))


def _names(text: str, case: Case, lenient: bool) -> list[str]:
    return [c.name for c in parse_reply(text, None, tools=case.tools, lenient=lenient).calls]


def _count(tally: Tally, text: str, case: Case) -> None:
    tally.turns += 1
    tally.with_json += _has_json(text)
    expected = {c.name for c in case.expected_calls}
    for lenient in (False, True):
        names = _names(text, case, lenient)
        hit = bool(names) and (not expected or set(names) <= expected)
        if lenient:
            tally.lenient_calls += hit
        else:
            tally.strict_calls += hit


def _bare(case: Case, fenced: bool) -> str:
    calls = [{"name": c.name, "arguments": c.arguments} for c in case.expected_calls]
    body = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
    return f"```json\n{body}\n```" if fenced else body


def reference_text(cases: list[Case]) -> tuple[Tally, Tally]:
    calls, no_calls = Tally(), Tally()
    for index, case in enumerate(cases):
        if case.expects_call:
            _count(calls, _bare(case, fenced=bool(index % 2)), case)
        elif case.tools:
            _count(no_calls, case.expected_text, case)
    return calls, no_calls


def model_replies(cases: list[Case], model: Path, max_tokens: int, n_threads: int | None) -> tuple[Tally, Tally]:
    from tooltune.engines import SamplingParams, load_engine
    from tooltune.families.registry import resolve_text
    from tooltune.families.respond import RespondOptions, respond

    engine = load_engine(model, n_ctx=4096, n_threads=n_threads, chat_template=resolve_text("qwen"))
    calls, no_calls = Tally(), Tally()
    started = time.perf_counter()
    try:
        for index, case in enumerate(cases, 1):
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=0)
            reply = respond(engine, case.messages, case.tools, RespondOptions(params=params))
            _count(calls if case.expects_call else no_calls, reply.raw, case)
            if index % 5 == 0 or index == len(cases):  # running tallies: a cut-short run still says something
                print(f"  [{index}/{len(cases)}] {time.perf_counter() - started:.0f} s; call turns: strict "
                      f"{calls.strict_calls}, lenient {calls.lenient_calls} of {calls.turns}; no-call turns: false "
                      f"strict {no_calls.strict_calls}, lenient {no_calls.lenient_calls} of {no_calls.turns}",
                      flush=True)
    finally:
        engine.close()
    return calls, no_calls


def main() -> None:
    from tooltune.data.args import DataArguments
    from tooltune.default_model import default_gguf_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="glaive_toolcall_en_demo,glaive_toolcall_zh_demo")
    parser.add_argument("--call-turns", type=int, default=40, help="model run: turns that need a call")
    parser.add_argument("--no-call-turns", type=int, default=60, help="model run: turns with tools and no call due")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: the embedded SmolLM2)")
    args = parser.parse_args()

    cases = [case for name in args.datasets.split(",")
             for case in load_cases(DataArguments(dataset=name, dataset_dir=str(DATA_DIR)))]
    ref_calls, ref_no_calls = reference_text(cases)
    print("reference text (demo data, calls re-written bare / ```json):")
    print("  " + ref_calls.line("call turns, call recovered"))
    print("  " + ref_no_calls.line("no-call turns, false calls"))

    # Spread the model run over the whole data (every k-th turn), not the first records only.
    call_cases = [c for c in cases if c.expects_call]
    no_call_cases = [c for c in cases if not c.expects_call and c.tools]
    picked = (call_cases[:: max(1, len(call_cases) // max(1, args.call_turns))][: args.call_turns]
              + no_call_cases[:: max(1, len(no_call_cases) // max(1, args.no_call_turns))][: args.no_call_turns])
    model = args.model or default_gguf_path()
    print(f"model replies: {model.name}, {len(picked)} turns, greedy, max_tokens {args.max_tokens}")
    started = time.perf_counter()
    calls, no_calls = model_replies(picked, model, args.max_tokens, args.threads)
    print("  " + calls.line("call turns, expected tool called"))
    print("  " + no_calls.line("no-call turns, false calls"))
    print(f"summary: reference recovered {ref_calls.lenient_calls - ref_calls.strict_calls}/{ref_calls.turns}, "
          f"false {ref_no_calls.lenient_calls}/{ref_no_calls.turns} (strict {ref_no_calls.strict_calls}); "
          f"model recovered {calls.lenient_calls - calls.strict_calls}/{calls.turns}, "
          f"false {no_calls.lenient_calls}/{no_calls.turns} (strict {no_calls.strict_calls}); "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
