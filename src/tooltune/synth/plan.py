"""The coverage plan: which samples to write, decided before any is written.

Counts are ``counts`` with the tool's ``tool_counts`` over them; a pair's parallel count is the smaller of its tools'.
Per callable tool and language:

* ``single``: ``max(counts.single, largest enum, ways of calling)`` samples; sample *i* takes the *i*-th value of every
  enum argument (so each enum value appears) and the *i*-th slot set (so each optional argument is both present and
  absent when templates for both exist);
* ``clarify``: ``counts.clarify`` dialogues per tool that has a required free-text argument and an opener without it;
* ``result``: ``counts.result`` call → result → final answer dialogues;
* ``parallel``: ``counts.parallel`` per pair of different callable tools, both called in one turn;
* ``no_call``: ``counts.no_call`` per language (routed to the fallback tool when the spec names one).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations

from tooltune.synth.pools import Pools, language_of
from tooltune.synth.spec import PATTERNS, SynthSpec


@dataclass(frozen=True)
class PlanItem:
    tool: str  # tool name, "A+B" for parallel pairs, the fallback tool or "(text)" for no-call turns
    pattern: str
    language: str
    index: int
    variant: frozenset[str] | None = None  # slot set of the template to use
    missing: str | None = None  # argument the clarification asks for
    pair: tuple[str, str] | None = None

    @property
    def key(self) -> str:
        return f"{self.tool}/{self.pattern}/{self.language}/{self.index}"


@dataclass
class Plan:
    items: list[PlanItem]
    gaps: list[str] = field(default_factory=list)  # what could not be planned, and why

    def counts(self) -> Counter[tuple[str, str, str]]:
        return Counter((item.tool, item.pattern, item.language) for item in self.items)

    def format(self, languages: list[str]) -> str:
        """A table: one row per tool, one column per pattern × language."""
        counts = self.counts()
        columns = [(p, lang) for p in (*PATTERNS, "example") for lang in languages]
        tools = list(dict.fromkeys(item.tool for item in self.items))
        header = ["tool"] + [f"{p}/{lang}" for p, lang in columns] + ["total"]
        rows = [header]
        for tool in tools:
            cells = [counts.get((tool, p, lang), 0) for p, lang in columns]
            rows.append([tool] + [str(c) if c else "·" for c in cells] + [str(sum(cells))])
        totals = [sum(counts.get((t, p, lang), 0) for t in tools) for p, lang in columns]
        rows.append(["total"] + [str(t) for t in totals] + [str(len(self.items))])
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                           for i, (cell, w) in enumerate(zip(row, widths, strict=True))) for row in rows]
        lines += [f"  gap: {gap}" for gap in self.gaps]
        return "\n".join(lines)


def build_plan(spec: SynthSpec, pools: Pools) -> Plan:
    items: list[PlanItem] = []
    gaps: list[str] = []
    for language in spec.languages:
        ready: list[str] = []
        for tool in spec.callable_tools:
            counts = spec.counts_for(tool.name)
            tp = pools.tools[tool.name]
            variants = tp.variants(language, tool.required)
            if not variants:
                gaps.append(f"{tool.name} ({language}): no template with all required arguments "
                            f"({', '.join(tool.required) or 'none'}); add templates or examples")
                continue
            ready.append(tool.name)
            for arg in tool.optional:
                if all(arg in v for v in variants) or not any(arg in v for v in variants):
                    state = "present" if all(arg in v for v in variants) else "absent"
                    gaps.append(f"{tool.name} ({language}): optional {arg!r} is always {state} (no template "
                                f"{'without' if state == 'present' else 'with'} it)")
            largest_enum = max((len(p.get("enum", [])) for p in tool.schema["properties"].values()), default=0)
            n_single = max(counts["single"], largest_enum, len(variants))
            items += [PlanItem(tool.name, "single", language, i, variants[i % len(variants)]) for i in range(n_single)]
            askable = [a for a in tool.required if tp.partial.get(language, {}).get(a)
                       and tp.values.get(language, {}).get(a)]
            free_text = [a for a in tool.required if not tool.schema["properties"].get(a, {}).get("enum")]
            if counts["clarify"] and free_text and not askable:
                gaps.append(f"{tool.name} ({language}): no clarification for {', '.join(free_text)} (needs values "
                            f"and an opener without the argument: add `clarify` templates or an example dialogue)")
            elif askable:
                items += [PlanItem(tool.name, "clarify", language, i, missing=askable[i % len(askable)])
                          for i in range(counts["clarify"])]
            items += [PlanItem(tool.name, "result", language, i, variants[i % len(variants)])
                      for i in range(counts["result"])]
        for first, second in combinations(ready, 2):
            pairs = min(spec.counts_for(first)["parallel"], spec.counts_for(second)["parallel"])
            items += [PlanItem(f"{first}+{second}", "parallel", language, i, pair=(first, second))
                      for i in range(pairs)]
        target = spec.fallback_tool or "(text)"
        items += [PlanItem(target, "no_call", language, i) for i in range(spec.counts["no_call"])]
    # The user's own examples are training data too (verified like the rest), first so that a generated sample
    # repeating one is the duplicate dropped.
    items[:0] = [PlanItem(_example_tool(record), "example", _example_language(record), i)
              for i, record in enumerate(spec.examples) if _example_language(record) in spec.languages]
    return Plan(items, gaps)


def _example_tool(record: dict) -> str:
    for turn in reversed(record.get("conversations", [])):
        if turn.get("from") == "function_call":
            try:
                calls = json.loads(turn["value"])
            except (KeyError, TypeError, json.JSONDecodeError):
                return "(unparsed)"
            calls = calls if isinstance(calls, list) else [calls]
            return "+".join(str(c.get("name")) for c in calls if isinstance(c, dict))
    return "(text)"


def _example_language(record: dict) -> str:
    humans = [t.get("value", "") for t in record.get("conversations", []) if t.get("from") == "human"]
    return language_of(humans[0]) if humans else "en"
