"""Generate, verify, de-duplicate and split: the whole ``tooltune synth`` run, writing a LLaMA-Factory dataset.

Outputs in ``out_dir``: ``<name>.json`` (training, sharegpt), ``<name>_test.json`` (held out; no user utterance in
common with training), ``dataset_info.json`` (both entries, merged into an existing file), ``rejected.jsonl`` (every
sample not kept, with its reason), ``plan.txt`` and ``report.json`` / ``report.md`` (counts per tool × pattern ×
language, kept and rejected).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooltune.atomic import write_text
from tooltune.synth.offline import GenerationGap, OfflineGenerator, Sample
from tooltune.synth.plan import Plan, PlanItem, build_plan
from tooltune.synth.pools import build_pools
from tooltune.synth.spec import PATTERNS, SynthError, SynthSpec
from tooltune.synth.verify import Rejection, Verifier, dedup_key, user_requests, user_utterances


@dataclass
class Rejected:
    item: PlanItem
    rejection: Rejection
    record: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {"tool": self.item.tool, "pattern": self.item.pattern, "language": self.item.language,
                "plan_item": self.item.key, "reason": self.rejection.reason, "detail": self.rejection.detail,
                "sample": self.record}


@dataclass
class SynthResult:
    plan: Plan
    train: list[Sample]
    test: list[Sample]
    rejected: list[Rejected]
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)
    redrawn: int = 0  # offline samples drawn again because their first draw repeated a kept sample

    def counts(self) -> dict[str, Counter[tuple[str, str, str]]]:
        def count(samples: Iterable[Sample]) -> Counter[tuple[str, str, str]]:
            return Counter((s.item.tool, s.item.pattern, s.item.language) for s in samples)

        return {"planned": self.plan.counts(), "train": count(self.train), "test": count(self.test),
                "rejected": Counter((r.item.tool, r.item.pattern, r.item.language) for r in self.rejected)}

    def summary(self) -> str:
        reasons = Counter(r.rejection.reason for r in self.rejected)
        why = f" ({', '.join(f'{n} {reason}' for reason, n in reasons.most_common())})" if reasons else ""
        kept = len(self.train) + len(self.test)
        rate = kept / self.seconds if self.seconds > 0 else float("inf")
        again = f", {self.redrawn} drawn again to avoid a repeat" if self.redrawn else ""
        return (f"synth: {len(self.plan.items)} planned → {len(self.train)} train + {len(self.test)} held-out, "
                f"{len(self.rejected)} rejected{why}{again} · {self.seconds:.2f}s ({rate:,.0f} verified/s)")


Generate = Callable[[PlanItem], dict[str, Any]]


def prepare(spec: SynthSpec) -> tuple[Plan, OfflineGenerator]:
    pools = build_pools(spec)
    return build_plan(spec, pools), OfflineGenerator(spec, pools)


def synthesize(spec: SynthSpec, plan: Plan, generate: Generate | None = None,
               offline: OfflineGenerator | None = None) -> SynthResult:
    """Generate every plan item (offline unless ``generate`` is given), verify, de-duplicate and split."""
    start = time.perf_counter()
    offline = offline or prepare(spec)[1]
    write = generate or (lambda item: offline.generate(item).record)
    verifier = Verifier(spec)
    kept: list[Sample] = []
    rejected: list[Rejected] = []
    seen: set[str] = set()
    redrawn = 0
    for item in plan.items:
        try:
            record = write(item)
        except (GenerationGap, SynthError) as exc:
            rejected.append(Rejected(item, Rejection("generation", str(exc)), None))
            continue
        key = dedup_key(record)
        # An offline repeat is drawn again (``spec.redraws``: other phrasings and templates, the same values; ~0.1 ms
        # a draw), so a bucket asking for as many samples as it has distinct requests gets them all. A teacher's
        # sample is not: each draw would be a paid request.
        again = generate is None and item.pattern != "example" and spec.redraws > 0
        if key in seen and again:
            draws = 0
            while key in seen and draws < spec.redraws:
                draws += 1
                record = offline.generate(item, draws).record
                key = dedup_key(record)
            redrawn += key not in seen
        # Near-duplicates of a kept sample are dropped before the (dearer) verification; a copy of a rejected sample
        # is verified and rejected for its own reason.
        problem = (Rejection("duplicate", "same turns as an earlier sample" + (
            f" (and in {spec.redraws} draws again)" if again else "")) if key in seen else verifier.check(record))
        if problem is None:
            seen.add(key)
        if problem is not None:
            rejected.append(Rejected(item, problem, record))
            continue
        kept.append(Sample(item, record))
    train, test, overlap = split_held_out(kept, spec.test_size, spec.seed)
    rejected += overlap
    return SynthResult(plan, train, test, rejected, time.perf_counter() - start, redrawn=redrawn)


def split_held_out(samples: list[Sample], test_size: float, seed: int,
                   ) -> tuple[list[Sample], list[Sample], list[Rejected]]:
    """Held-out samples drawn per tool × pattern × language (so every bucket is tested); training samples that share
    a user request with any held-out one (an utterance, or one of the requests a parallel turn joins) are rejected
    rather than leaked."""
    if test_size <= 0:
        return samples, [], []
    # The user's own examples always train, so nothing they say may be held out.
    said_in_examples = set().union(*(user_requests(s.record) for s in samples if s.item.pattern == "example"))
    buckets: dict[tuple[str, str, str], list[Sample]] = defaultdict(list)
    for sample in samples:
        if sample.item.pattern != "example" and not user_requests(sample.record) & said_in_examples:
            buckets[(sample.item.tool, sample.item.pattern, sample.item.language)].append(sample)
    test_keys: set[str] = set()
    for members in buckets.values():
        if len(members) < 2:
            continue
        order = sorted(members, key=lambda s: random.Random(f"{seed}:split:{s.item.key}").random())
        n_test = max(1, round(len(members) * test_size))
        test_keys.update(s.item.key for s in order[:n_test])
    # Two held-out samples that share a user utterance (a single call and a call → result dialogue drawing the same
    # request) would score one request twice: the later one is rejected instead.
    test: list[Sample] = []
    overlap: list[Rejected] = []
    heard: set[str] = set()
    for sample in samples:
        if sample.item.key not in test_keys:
            continue
        shared = user_utterances(sample.record) & heard
        if shared:
            overlap.append(Rejected(sample.item, Rejection("test_overlap", f"says {sorted(shared)[0]!r}, as "
                                                           f"another held-out sample does"), sample.record))
            continue
        test.append(sample)
        heard |= user_utterances(sample.record)
    # Against training, the requests inside parallel turns count too (a leak either way round); among held-out
    # samples they do not: a parallel request and a single call of one of its halves test different things.
    asked = set().union(*(user_requests(s.record) for s in test))
    train = []
    for sample in samples:
        if sample.item.key in test_keys:
            continue
        shared = user_requests(sample.record) & asked
        if shared:
            overlap.append(Rejected(sample.item, Rejection("test_overlap", f"says {sorted(shared)[0]!r}, as a "
                                                           f"held-out sample does"), sample.record))
        else:
            train.append(sample)
    return train, test, overlap


# ---- output


def write_outputs(spec: SynthSpec, result: SynthResult, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = spec.name
    files = {
        "train": out_dir / f"{name}.json",
        "test": out_dir / f"{name}_test.json",
        "dataset_info": out_dir / "dataset_info.json",
        "rejected": out_dir / "rejected.jsonl",
        "plan": out_dir / "plan.txt",
        "report_json": out_dir / "report.json",
        "report_md": out_dir / "report.md",
    }
    write_text(files["train"], json.dumps([s.record for s in result.train], ensure_ascii=False, indent=1))
    write_text(files["test"], json.dumps([s.record for s in result.test], ensure_ascii=False, indent=1))
    info: dict[str, Any] = {}
    if files["dataset_info"].is_file():
        try:
            info = json.loads(files["dataset_info"].read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SynthError(f"{files['dataset_info']}: existing file is not valid JSON ({exc.msg}); "
                             f"fix or remove it") from None
    entry = {"formatting": "sharegpt", "columns": {"messages": "conversations", "system": "system", "tools": "tools"},
             "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                      "observation_tag": "observation", "function_tag": "function_call"}}
    info[name] = {"file_name": files["train"].name, **entry}
    info[f"{name}_test"] = {"file_name": files["test"].name, **entry}
    write_text(files["dataset_info"], json.dumps(info, ensure_ascii=False, indent=2) + "\n")
    write_text(files["rejected"], "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in result.rejected))
    write_text(files["plan"], result.plan.format(spec.languages) + "\n")
    report = report_data(spec, result)
    write_text(files["report_json"], json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    write_text(files["report_md"], report_markdown(spec, result))
    result.files = files
    return files


def report_data(spec: SynthSpec, result: SynthResult) -> dict[str, Any]:
    counts = result.counts()
    rows = []
    order = (*PATTERNS, "example")
    for key in sorted(counts["planned"], key=lambda k: (k[2], k[0], order.index(k[1]))):
        tool, pattern, language = key
        rows.append({"tool": tool, "pattern": pattern, "language": language,
                     **{kind: counts[kind].get(key, 0) for kind in ("planned", "train", "test", "rejected")}})
    return {
        "summary": result.summary(),
        "seconds": result.seconds,
        "totals": {"planned": len(result.plan.items), "train": len(result.train), "test": len(result.test),
                   "rejected": len(result.rejected), "redrawn": result.redrawn},
        "rejected_by_reason": dict(Counter(r.rejection.reason for r in result.rejected)),
        "rows": rows,
        "gaps": result.plan.gaps,
        "spec": spec.source,
    }


def report_markdown(spec: SynthSpec, result: SynthResult) -> str:
    data = report_data(spec, result)
    lines = [f"# synth report: {spec.name}", "", data["summary"], "",
             "| tool | pattern | language | planned | train | held-out | rejected |",
             "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['tool']} | {r['pattern']} | {r['language']} | {r['planned']} | {r['train']} | {r['test']} | "
              f"{r['rejected']} |" for r in data["rows"]]
    if data["rejected_by_reason"]:
        lines += ["", "Rejected by reason (samples and details in rejected.jsonl):", ""]
        lines += [f"- {reason}: {n}" for reason, n in sorted(data["rejected_by_reason"].items())]
    if data["gaps"]:
        lines += ["", "Plan gaps:", ""] + [f"- {gap}" for gap in data["gaps"]]
    return "\n".join(lines) + "\n"
