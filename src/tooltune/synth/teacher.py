"""The teacher generator: an LLM behind any OpenAI-compatible endpoint rewrites the user turns of planned samples.

The offline generator still decides the calls (so arguments stay schema-valid and the plan's coverage holds); the
teacher rewrites what the user says, in the sample's language, keeping every quoted value verbatim. Its answer is asked
for as JSON — with a JSON schema where the endpoint supports ``response_format: json_schema`` (``tooltune serve``,
vLLM, OpenAI), else ``json_object``, else plain text parsed as JSON — and verification then rejects any rewrite that
dropped a value (``ungrounded``) like any other sample.

Requests run with bounded concurrency and the client's retries, and every answer (or failure) is stored in an on-disk
cache under a key of the request, written under a temporary name and renamed: a run that is killed and started again
re-reads what it already paid for and asks only for the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from tooltune.atomic import write_text
from tooltune.synth.offline import GenerationGap, OfflineGenerator
from tooltune.synth.plan import PlanItem
from tooltune.synth.spec import SynthError, SynthSpec

STRUCTURED_MODES = ("auto", "json_schema", "json_object", "off")
LANGUAGE_NAMES = {"zh": "Simplified Chinese", "en": "English"}


@dataclass
class TeacherConfig:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    cache_dir: Path = Path("teacher_cache")
    structured: str = "auto"
    retries: int = 3
    timeout_s: float = 120.0
    max_tokens: int = 256
    temperature: float = 0.7


@dataclass
class TeacherStats:
    requests: int = 0
    cached: int = 0
    failed: int = 0
    seconds: float = 0.0
    mode: str = ""
    errors: list[str] = field(default_factory=list)


class TeacherError(SynthError):
    pass


def rewrite_schema(n_turns: int) -> dict[str, Any]:
    return {"type": "object", "properties": {"user_turns": {"type": "array", "items": {"type": "string"},
                                                            "minItems": n_turns, "maxItems": n_turns}},
            "required": ["user_turns"], "additionalProperties": False}


class TeacherGenerator:
    def __init__(self, spec: SynthSpec, offline: OfflineGenerator, config: TeacherConfig,
                 console: Console | None = None) -> None:
        if config.structured not in STRUCTURED_MODES:
            raise TeacherError(f"--structured {config.structured!r}: expected one of {', '.join(STRUCTURED_MODES)}")
        if config.concurrency < 1:
            raise TeacherError("--concurrency must be at least 1")
        self.spec = spec
        self.offline = offline
        self.config = config
        self.console = console or Console(stderr=True)
        self.stats = TeacherStats(mode=config.structured)
        config.cache_dir.mkdir(parents=True, exist_ok=True)

    # ---- prompts and cache

    def _prompt(self, draft: dict[str, Any], language: str, no_call: bool = False,
                ) -> tuple[list[dict[str, str]], list[str]]:
        turns = draft["conversations"]
        users = [t["value"] for t in turns if t["from"] == "human"]
        keep = [] if no_call else _quoted_values(turns)  # the fallback takes whatever the user says
        shown = "\n".join(f"{t['from']}: {t['value']}" for t in turns)
        instruction = (
            f"Rewrite each user turn of this tool-calling conversation as a real user would say it, in "
            f"{LANGUAGE_NAMES[language]}. Keep the meaning. Copy these values exactly, character for character: "
            f"{json.dumps(keep, ensure_ascii=False)}. Answer with JSON only: "
            f'{{"user_turns": [{len(users)} strings, one per user turn, in order]}}.'
        )
        messages = [{"role": "system", "content": "You write training data for a tool-calling assistant."},
                    {"role": "user", "content": f"{instruction}\n\nConversation:\n{shown}"}]
        return messages, users

    def _key(self, messages: list[dict[str, str]], n_turns: int) -> str:
        blob = json.dumps({"model": self.config.model, "base_url": self.config.base_url, "messages": messages,
                           "schema": rewrite_schema(n_turns), "temperature": self.config.temperature,
                           "max_tokens": self.config.max_tokens}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.config.cache_dir / key[:2] / f"{key}.json"

    # ---- requests

    def _client(self) -> Any:
        from openai import AsyncOpenAI

        key = os.environ.get(self.config.api_key_env) or "not-needed"  # local servers take any key
        return AsyncOpenAI(base_url=self.config.base_url, api_key=key, max_retries=self.config.retries,
                           timeout=self.config.timeout_s)

    def _formats(self, n_turns: int) -> list[tuple[str, dict[str, Any] | None]]:
        schema = {"type": "json_schema",
                  "json_schema": {"name": "user_turns", "schema": rewrite_schema(n_turns), "strict": True}}
        options = {"json_schema": schema, "json_object": {"type": "json_object"}, "off": None}
        if self.config.structured == "auto":
            order = [m for m in ("json_schema", "json_object", "off") if m not in self._refused]
            return [(m, options[m]) for m in order]
        return [(self.config.structured, options[self.config.structured])]

    async def _ask(self, client: Any, messages: list[dict[str, str]], n_turns: int) -> dict[str, Any]:
        import openai

        last_error = ""
        for mode, response_format in self._formats(n_turns):
            extra = {"response_format": response_format} if response_format else {}
            try:
                response = await client.chat.completions.create(
                    model=self.config.model, messages=messages, temperature=self.config.temperature,
                    max_tokens=self.config.max_tokens, **extra)
            except openai.BadRequestError as exc:
                # The endpoint does not take this response_format: remember, and try the next one.
                self._refused.add(mode)
                last_error = f"{mode} refused: {exc}"
                continue
            self.stats.mode = mode
            return {"mode": mode, "text": response.choices[0].message.content or ""}
        raise TeacherError(last_error or "no structured-output mode left to try")

    async def _one(self, client: Any, semaphore: asyncio.Semaphore, item: PlanItem,
                   results: dict[str, dict[str, Any]], progress: Any, task: Any) -> None:
        try:
            draft = self.offline.generate(item).record
        except GenerationGap as exc:
            results[item.key] = {"error": f"generation: {exc}"}
            progress.advance(task)
            return
        if item.pattern == "example":  # the user's own words stay as written
            results[item.key] = draft
            progress.advance(task)
            return
        messages, users = self._prompt(draft, item.language, no_call=item.pattern == "no_call")
        key = self._key(messages, len(users))
        path = self._cache_path(key)
        if path.is_file():
            entry = json.loads(path.read_text(encoding="utf-8"))
            self.stats.cached += 1
        else:
            async with semaphore:
                try:
                    entry = await self._ask(client, messages, len(users))
                except Exception as exc:  # network, server or refusal: cached as a failure, reported
                    entry = {"error": f"{type(exc).__name__}: {exc}"}
            self.stats.requests += 1
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, json.dumps(entry, ensure_ascii=False))
        results[item.key] = _apply(draft, entry, len(users))
        if item.pattern == "no_call" and "error" not in results[item.key]:
            _route_to_fallback(results[item.key])
        if "error" in results[item.key]:
            self.stats.failed += 1
            self.stats.errors.append(results[item.key]["error"])
        progress.advance(task)

    async def _run(self, items: list[PlanItem]) -> dict[str, dict[str, Any]]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._refused: set[str] = set()
        results: dict[str, dict[str, Any]] = {}
        semaphore = asyncio.Semaphore(self.config.concurrency)
        client = self._client()
        try:
            with Progress(TextColumn("teacher"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=self.console, transient=True) as progress:
                task = progress.add_task("teacher", total=len(items))
                await asyncio.gather(*(self._one(client, semaphore, i, results, progress, task) for i in items))
        finally:
            await client.close()
        return results

    def generate_all(self, items: list[PlanItem]) -> dict[str, dict[str, Any]]:
        """Sharegpt records by plan-item key; a failed item maps to ``{"error": ...}`` (a ``generation`` rejection)."""
        start = time.perf_counter()
        results = asyncio.run(self._run(items))
        self.stats.seconds = time.perf_counter() - start
        return results

    @staticmethod
    def as_generate(results: dict[str, dict[str, Any]]) -> Any:
        """``synthesize``'s generate callable over the results: failures become ``generation`` rejections."""

        def generate(item: PlanItem) -> dict[str, Any]:
            record = results[item.key]
            if "error" in record:
                raise GenerationGap(record["error"])
            return record

        return generate

    def summary(self) -> str:
        s = self.stats
        rate = s.requests / s.seconds if s.seconds else 0.0
        return (f"teacher {self.config.model} @ {self.config.base_url}: {s.requests} requests ({rate:.2f}/s, "
                f"{self.config.concurrency} concurrent) + {s.cached} from cache, {s.failed} failed · "
                f"{s.seconds:.1f}s · output mode {s.mode}")


def _quoted_values(turns: list[dict[str, str]]) -> list[str]:
    """String argument values the user turns must keep (enum values may be said in other words)."""
    values: list[str] = []
    for turn in turns:
        if turn["from"] != "function_call":
            continue
        calls = json.loads(turn["value"])
        for call in calls if isinstance(calls, list) else [calls]:
            for value in call.get("arguments", {}).values():
                if isinstance(value, str) and any(value in t["value"] for t in turns if t["from"] == "human"):
                    values.append(value)
    return values


def _apply(draft: dict[str, Any], entry: dict[str, Any], n_turns: int) -> dict[str, Any]:
    """The draft with its user turns replaced by the teacher's, or ``{"error": ...}`` saying why not."""
    if "error" in entry:
        return {"error": f"teacher request failed: {entry['error']}"}
    text = entry.get("text", "").strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        parsed = json.loads(text, strict=False)  # raw newlines inside strings are harmless here
    except json.JSONDecodeError as exc:
        return {"error": f"teacher answer is not JSON ({exc.msg}): {text[:120]!r}"}
    turns = parsed.get("user_turns") if isinstance(parsed, dict) else None
    if not isinstance(turns, list) or len(turns) != n_turns or not all(isinstance(t, str) and t.strip()
                                                                        for t in turns):
        return {"error": f"teacher answer does not hold {n_turns} user turn(s): {text[:120]!r}"}
    record = json.loads(json.dumps(draft))
    rewritten = iter(turns)
    for turn in record["conversations"]:
        if turn["from"] == "human":
            turn["value"] = next(rewritten).strip()
    return record


def _route_to_fallback(record: dict[str, Any]) -> None:
    """A rewritten no-call turn: the fallback's argument is the user's new words (the plan routes them there)."""
    turns = record["conversations"]
    for position, turn in enumerate(turns):
        if turn["from"] == "function_call" and position and turns[position - 1]["from"] == "human":
            call = json.loads(turn["value"])
            if isinstance(call, dict) and len(call.get("arguments", {})) == 1:
                arg = next(iter(call["arguments"]))
                call["arguments"][arg] = turns[position - 1]["value"]
                turn["value"] = json.dumps(call, ensure_ascii=False)
