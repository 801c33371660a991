"""One check across backends: does every way the model is run see the text it was trained on, and read its replies
into the same calls? The release gate ``tooltune check-backends`` runs (and ``tooltune run`` after its modelfile
stage).

Per conversation of a dataset, four renders of the same request are compared, each text training saw (every prompt
before an assistant message with its generation prompt, and the trained text itself):

    training   the training render (``tooltune.templates``: the text and spans training tokenizes)
    hf         the model folder's chat template through the sandboxed Jinja renderer (= ``apply_chat_template``;
               what transformers, vLLM and ``tooltune serve`` on the folder render)
    gguf       the GGUF's ``tokenizer.chat_template`` with the GGUF's BOS/EOS (llama.cpp, ``tooltune serve`` on it)
    modelfile  the Modelfile TEMPLATE through Go's ``text/template`` with Ollama 0.33.0's data (Ollama)

The other backends get the request a client sends: OpenAI-shaped tools and the conversation as training rendered it
(call ids, ``--thinking``, ``--tool_view`` applied); Ollama gets it through ``canonicalize_for_ollama``, as its API
decodes it. Each assistant reply of the training text (without its end-of-turn marker: what the model writes) is then
read by every parser path — the family parser whole and streamed character by character, the Ollama API's and the
OpenAI API's reader (``serve.family_reply.ReplyReader`` + their wire shapes), and eval's scoring — and each must
return the data's calls (names, arguments, and ids where the family carries them).

A difference is ``known`` (reported with its reason, not failing the gate) only where it is by design and something
else makes serving right: the folder's or GGUF's template is a known-broken upstream one (``families.problems``
names what it loses; tooltune trains with the corrected one, writes it into exported models and GGUFs, and
``vllm-command`` passes it with ``--chat-template``); Ollama's view of tools (sorted keys, schema keys it has no field
for dropped: train with ``--tool_view ollama`` to make it byte-equal); a TEMPLATE leaving a finished conversation's
last reply open (Ollama continues it; prompts are equal); SmolLM3's Python-repr tools holding ``'``. The BOS a template
prints is not a difference for the TEMPLATE: llama.cpp adds it when Ollama tokenizes. Every other difference is a
``mismatch`` and the gate fails; a backend that cannot be checked says why (``not checked: ...``), never passes.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tooltune import chat_template
from tooltune.conversation import Conversation, Tool, ToolCall
from tooltune.errors import TooltuneError
from tooltune.families.family import Family

PAIRS = ("hf", "gguf", "modelfile")  # each compared with the training render
PAIR_LABELS = {"hf": "train = HF", "gguf": "train = GGUF", "modelfile": "train = Modelfile"}
PARSE_PATHS = ("parser", "streamed", "ollama_api", "openai_api", "eval")
CONTEXT = 40  # characters shown on each side of a first difference


class BackendCheckError(TooltuneError, ValueError):
    pass


# ------------------------------------------------------------------------------------------------ results


@dataclass
class Difference:
    item: str  # which text: "prompt of message 3", "whole conversation", ...
    position: int  # first differing character
    expected: str  # training text around the position
    got: str  # the backend's text around the position


@dataclass
class PairResult:
    status: str  # equal | known | mismatch | not checked
    note: str = ""
    difference: Difference | None = None


@dataclass
class ParseResult:
    status: str  # equal | mismatch
    replies: int = 0
    calls: int = 0
    note: str = ""


@dataclass
class ConversationRow:
    index: int
    where: str
    texts: int
    pairs: dict[str, PairResult]
    parse: ParseResult
    error: str = ""  # the training render itself failed (the conversation is refused by training)

    @property
    def mismatch(self) -> bool:
        return bool(self.error) or self.parse.status == "mismatch" or any(
            p.status == "mismatch" for p in self.pairs.values())


@dataclass
class CheckReport:
    family: str
    template: str
    sources: dict[str, str]  # backend -> where its template came from, or why it is not checked
    rows: list[ConversationRow] = field(default_factory=list)

    @property
    def mismatches(self) -> int:
        return sum(row.mismatch for row in self.rows)

    def pair_counts(self, pair: str) -> Counter[str]:
        return Counter(row.pairs[pair].status for row in self.rows if not row.error)

    def summary_line(self) -> str:
        parts = [f"{len(self.rows)} conversations ({self.family}, template {self.template})"]
        for pair in PAIRS:
            counts = self.pair_counts(pair)
            if counts.get("not checked") == sum(counts.values()):
                parts.append(f"{PAIR_LABELS[pair]}: not checked")
                continue
            extra = "".join(f", {counts[s]} {s}" for s in ("known", "mismatch", "not checked") if counts.get(s))
            parts.append(f"{PAIR_LABELS[pair]} {counts.get('equal', 0)}/{sum(counts.values())}{extra}")
        replies = sum(r.parse.replies for r in self.rows)
        calls = sum(r.parse.calls for r in self.rows)
        same = sum(r.parse.status == "equal" for r in self.rows if not r.error)
        parts.append(f"parse {same}/{len(self.rows)} ({replies} replies, {calls} calls x {len(PARSE_PATHS)} paths)")
        parts.append(f"{self.mismatches} mismatch" + ("" if self.mismatches == 1 else "es"))
        return "check-backends: " + " · ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "template": self.template, "sources": self.sources,
                "mismatches": self.mismatches, "summary": self.summary_line(),
                "rows": [asdict(row) for row in self.rows]}

    def write_json(self, path: str | Path) -> Path:
        from tooltune.atomic import write_text

        return write_text(Path(path), json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")


def first_difference(item: str, expected: str, got: str) -> Difference:
    shorter = min(len(expected), len(got))
    position = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), shorter)
    start = max(0, position - CONTEXT)
    return Difference(item, position, expected[start:position + CONTEXT], got[start:position + CONTEXT])


# ------------------------------------------------------------------------------------------------ what to compare


@dataclass
class Text:
    """One text training saw, and the request that renders it."""

    label: str
    messages: list[dict[str, Any]]
    generation: bool
    training: str


@dataclass
class Reply:
    position: int
    prompt: str
    text: str  # what the model writes: the trained reply without its end-of-turn marker
    expected: list[ToolCall]


@dataclass
class Backends:
    """Where each render comes from; a template of None means that backend is not checked (``notes`` says why)."""

    template: Any  # tooltune.templates.Template (the training one)
    family: Family | None
    tools_as_request: bool = True
    hf: str | None = None
    hf_tokens: tuple[str, str] = ("", "")  # (bos, eos) the folder's tokenizer passes
    gguf: str | None = None
    gguf_tokens: tuple[str, str] = ("", "")
    go_template: str | None = None
    go_binary: Path | None = None
    go_jinja: str | None = None  # the Jinja the TEMPLATE stands for (reference for Ollama's view of tools)
    serve_template: str = ""  # what tooltune serve reads replies with (GGUF > folder > training)
    sources: dict[str, str] = field(default_factory=dict)


def _split_template(template: Any, conv: Conversation) -> tuple[Any, Conversation]:
    from tooltune.templates.tool_view import OllamaToolView, ollama_view

    if isinstance(template, OllamaToolView):
        return template.inner, ollama_view(conv)
    return template, conv


def _request_messages(template: Any, conv: Conversation, count: int) -> list[dict[str, Any]]:
    """The messages training rendered for the first ``count`` messages (call ids, thinking policy applied)."""
    from tooltune.templates.jinja import JinjaTemplate

    if isinstance(template, JinjaTemplate):
        return template._messages(conv, count)
    return conv.template_messages()[:count]


def training_texts(template: Any, conv: Conversation) -> tuple[list[Text], list[Reply]]:
    """Every text training saw for ``conv`` and each assistant reply in it, from the training path itself."""
    from tooltune.families.stops import strip_end_of_turn
    from tooltune.templates.jinja import JinjaTemplate

    inner, conv = _split_template(template, conv)
    positions = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
    texts: list[Text] = []
    spans: list[tuple[int, str, str]] = []  # (position, prompt, reply)
    if isinstance(inner, JinjaTemplate):
        views = inner.views(conv)
        if len(views) == 1:
            full, cuts = views[0]
            for position, (start, end) in zip(positions, cuts, strict=True):
                spans.append((position, full[:start], full[start:end]))
            whole = [(len(conv.messages), full, "whole conversation")]
        else:
            whole = []
            for position, (text, [(start, end)]) in zip(positions, views, strict=True):
                spans.append((position, text[:start], text[start:end]))
                # A reply trained after the served prompt (Hermes 3 closes a last tool result differently) is not
                # the template's rendering of the messages through it: its prompt is compared, not that text.
                if text == inner._render(conv, position + 1, False):
                    whole.append((position + 1, text, f"through message {position}"))
    else:
        so_far = ""
        for position, turn in zip(positions, inner.turns(conv), strict=True):
            spans.append((position, so_far + turn.prompt, turn.response))
            so_far += turn.prompt + turn.response
        whole = [(positions[-1] + 1, so_far, "whole conversation")] if positions else []
    for position, prompt, _ in spans:
        texts.append(Text(f"prompt of message {position}", _request_messages(inner, conv, position), True, prompt))
    for count, text, label in whole:
        texts.append(Text(label, _request_messages(inner, conv, count), False, text))
    source = inner.jinja_chat_template
    eos = getattr(inner, "eos_token", "") or getattr(inner.tokenizer, "eos_token", "") or ""
    full_messages = _request_messages(inner, conv, len(conv.messages))
    replies = [Reply(position, prompt, strip_end_of_turn(reply, source, eos),
                     [ToolCall.from_any(c) for c in full_messages[position + _offset(inner, conv)].get("tool_calls")
                      or []])
               for position, prompt, reply in spans]
    return texts, replies


def _offset(template: Any, conv: Conversation) -> int:
    """Messages a Jinja template prepends (``default_system`` for a conversation without one)."""
    from tooltune.templates.jinja import JinjaTemplate

    if not isinstance(template, JinjaTemplate):
        return 0
    return 1 if getattr(template, "default_system", None) is not None and conv.system is None else 0


# ------------------------------------------------------------------------------------------------ rendering


def _tools(conv: Conversation) -> list[dict[str, Any]] | None:
    return [tool.to_openai() for tool in conv.tools] or None


def _extra(template: Any) -> dict[str, Any]:
    family = getattr(template, "family", None)
    if getattr(template, "thinking", "keep") == "off" and family is not None and family.thinks:
        return {"enable_thinking": False}
    return {}


def render_jinja(source: str, text: Text, tools: list[dict[str, Any]] | None, tokens: tuple[str, str],
                 extra: dict[str, Any]) -> str:
    try:
        return chat_template.render(source, text.messages, tools=tools, add_generation_prompt=text.generation,
                                    bos_token=tokens[0], eos_token=tokens[1], **extra)
    except chat_template.ChatTemplateError as exc:
        return f"<render error: {exc}>"


def ollama_request(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """What Ollama's API hands its TEMPLATE: keys sorted, schema keys it has no field for dropped, reasoning as
    ``thinking``."""
    from tooltune.serve.modelfile import canonicalize_for_ollama

    canonical, canonical_tools = canonicalize_for_ollama(messages, tools)
    for message in canonical:
        if "reasoning_content" in message:
            message["thinking"] = message.pop("reasoning_content")
    return canonical, canonical_tools


@functools.lru_cache(maxsize=8)
def _problems(source: str) -> tuple[str, ...]:
    from tooltune.families.problems import template_problems

    return tuple(template_problems(source))


def compare_jinja(texts: list[Text], rendered: list[str], source: str) -> PairResult:
    for text, got in zip(texts, rendered, strict=True):
        if got != text.training:
            difference = first_difference(text.label, text.training, got)
            problems = _problems(source)
            if problems:
                return PairResult("known", "upstream template broken: " + "; ".join(problems) + " (tooltune trains "
                                  "with its corrected template and writes it into exported models and GGUFs; "
                                  "vllm-command passes it with --chat-template)", difference)
            return PairResult("mismatch", "", difference)
    return PairResult("equal")


def _same_but_bos(got: str, text: str, bos: str) -> bool:
    """Equal, or equal once the BOS the Jinja printed first is left out (llama.cpp adds it when Ollama tokenizes)."""
    return got == text or bool(bos) and text.startswith(bos) and got == text[len(bos):]


def compare_go(texts: list[Text], rendered: list[str | Exception], backends: Backends,
               tools: list[dict[str, Any]] | None, extra: dict[str, Any]) -> PairResult:
    """The TEMPLATE's text against training, with Ollama's by-design differences named (module docstring)."""
    bos, eos = backends.gguf_tokens if backends.gguf is not None else backends.hf_tokens
    worst = PairResult("equal")
    for text, got in zip(texts, rendered, strict=True):
        if isinstance(got, Exception):
            return PairResult("mismatch", f"Go text/template refused it: {got}",
                              Difference(text.label, 0, text.training[:2 * CONTEXT], ""))
        if _same_but_bos(got, text.training, bos):
            continue
        note = ""
        if not text.generation and eos and text.training.endswith(eos) and _same_but_bos(
                got, text.training.removesuffix(eos), bos):
            note = "the TEMPLATE leaves a finished conversation's last reply open (Ollama continues it)"
        elif backends.go_jinja is not None:
            messages, canonical_tools = ollama_request(text.messages, tools)
            for message in messages:  # the Jinja reads reasoning as reasoning_content
                if "thinking" in message:
                    message["reasoning_content"] = message.pop("thinking")
            reference = render_jinja(backends.go_jinja, Text(text.label, messages, text.generation, ""),
                                     canonical_tools, (bos, eos), extra)
            if _same_but_bos(got, reference, bos) or (eos and _same_but_bos(got, reference.removesuffix(eos), bos)):
                note = ("Ollama shows tools and call arguments with sorted keys and without the schema keys it has "
                        "no field for; train with --tool_view ollama for byte equality")
            elif backends.family is not None and backends.family.name == "smollm3" and "'" in json.dumps(
                    tools, ensure_ascii=False):
                note = "SmolLM3 prints tools as Python reprs; a string holding ' cannot be quoted alike by Go"
        expected = text.training[len(bos):] if bos and text.training.startswith(bos) and not got.startswith(bos) \
            else text.training
        difference = first_difference(text.label, expected, got)
        if not note:
            return PairResult("mismatch", "", difference)
        if worst.status == "equal":
            worst = PairResult("known", note, difference)
    return worst


# ------------------------------------------------------------------------------------------------ parsing


def _keys(calls: list[ToolCall], with_ids: bool) -> list[tuple[str, str, str]]:
    return [(c.name, json.dumps(c.arguments, sort_keys=True, ensure_ascii=False), (c.id or "") if with_ids else "")
            for c in calls]


def parse_paths(reply: Reply, family: Family | None, tools: list[Tool], serve_template: str
                ) -> dict[str, list[ToolCall]]:
    """The calls each backend path reads from one reply text."""
    from tooltune.eval.cases import Case
    from tooltune.eval.scoring import score_case
    from tooltune.eval.targets import Generation
    from tooltune.families.parsers import THINK_OPEN, parse_reply, reply_parser
    from tooltune.families.respond import engine_family
    from tooltune.serve import wire
    from tooltune.serve.family_reply import ReplyReader
    from tooltune.toolcalls import ToolCallDone

    thinking_open = bool(family and family.thinks and reply.prompt.rstrip().endswith(THINK_OPEN))
    out: dict[str, list[ToolCall]] = {}
    out["parser"] = parse_reply(reply.text, family, tools=tools, thinking_open=thinking_open).calls
    streamed = reply_parser(family, tools=tools, thinking_open=thinking_open)
    for char in reply.text:
        streamed.feed(char)
    streamed.finish()
    out["streamed"] = streamed.result().calls
    # Ollama API (/api/chat, not streamed): the whole reply through the reader, then its wire shape.
    reader = ReplyReader(serve_template, reply.prompt, tools, parse_calls=True)
    reader.feed(reply.text)
    reader.finish()
    out["ollama_api"] = [ToolCall.from_any(wire.ollama_tool_call(c, i)) for i, c in enumerate(reader.result().calls)]
    # OpenAI API (streamed): calls as the SSE chunks send them, one per completed call.
    reader = ReplyReader(serve_template, reply.prompt, tools, parse_calls=True)
    events = [event for char in reply.text for event in reader.feed(char)] + reader.finish()
    out["openai_api"] = [ToolCall.from_any(wire.openai_tool_call(e.call, e.index)) for e in events
                         if isinstance(e, ToolCallDone)]
    # Eval: a local target's raw text, scored with the served template's family (as EngineTarget does).
    served = engine_family(type("Engine", (), {"chat_template": serve_template})())
    case = Case(id="check", category="check", messages=[], tools=[t.to_openai() for t in tools],
                functions=[t.function for t in tools], expected_calls=reply.expected)
    scored = score_case(case, Generation(text=reply.text, family=served.name if served else None))
    out["eval"] = [ToolCall.from_any(c) for c in scored.calls]
    return out


def check_parsing(replies: list[Reply], family: Family | None, tools: list[Tool], serve_template: str
                  ) -> ParseResult:
    with_ids = bool(family and family.tool_call_ids)
    result = ParseResult("equal", replies=len(replies), calls=sum(len(r.expected) for r in replies))
    for reply in replies:
        expected = _keys(reply.expected, with_ids)
        for path, calls in parse_paths(reply, family, tools, serve_template).items():
            ids = with_ids and path not in ("eval",)  # eval scores names and arguments only
            got = _keys(calls, ids)
            want = expected if ids else _keys(reply.expected, False)
            if got != want:
                result.status = "mismatch"
                result.note = (f"message {reply.position}, {path}: read {[g[:2] for g in got]} "
                               f"from {reply.text[:120]!r}, expected {[w[:2] for w in want]}")
                return result
    return result


# ------------------------------------------------------------------------------------------------ the check


def _short_where(conv: Conversation) -> str:
    """``file.json record 3``: the record without the folder (the table has little room)."""
    if conv.source is None:
        return conv.where()
    name = Path(conv.source).name
    return f"{name} record {conv.index}" if conv.index is not None else name


def check_conversations(conversations: list[Conversation], backends: Backends) -> list[ConversationRow]:
    from tooltune.serve.go_template import render_go
    from tooltune.templates.base import TemplateError

    rows: list[ConversationRow] = []
    go_cases: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]] | None]] = []
    pending: list[tuple[ConversationRow, list[Text], int, list[dict[str, Any]] | None, dict[str, Any]]] = []
    for index, original in enumerate(conversations):
        inner, conv = _split_template(backends.template, original)
        try:
            texts, replies = training_texts(backends.template, original)
        except TemplateError as exc:
            rows.append(ConversationRow(index, _short_where(original), 0, {p: PairResult("not checked") for p in PAIRS},
                                        ParseResult("mismatch"), error=str(exc)))
            continue
        tools = _tools(conv)
        extra = _extra(inner)
        pairs: dict[str, PairResult] = {}
        for name, source, tokens in (("hf", backends.hf, backends.hf_tokens),
                                     ("gguf", backends.gguf, backends.gguf_tokens)):
            if source is None:
                pairs[name] = PairResult("not checked", backends.sources.get(name, ""))
            else:
                rendered = [render_jinja(source, t, tools, tokens, extra) for t in texts]
                pairs[name] = compare_jinja(texts, rendered, source)
        parse = check_parsing(replies, backends.family, conv.tools, backends.serve_template)
        row = ConversationRow(index, _short_where(original), len(texts), pairs, parse)
        rows.append(row)
        if backends.go_template is None or backends.go_binary is None:
            pairs["modelfile"] = PairResult("not checked", backends.sources.get("modelfile", ""))
            continue
        pending.append((row, texts, len(go_cases), tools, extra))
        for text in texts:
            go_cases.append((backends.go_template, *ollama_request(text.messages, tools)))
    if pending:
        assert backends.go_binary is not None
        outputs = render_go(backends.go_binary, go_cases)
        for row, texts, start, tools, extra in pending:
            row.pairs["modelfile"] = compare_go(texts, outputs[start:start + len(texts)], backends, tools, extra)
    return rows


# ------------------------------------------------------------------------------------------------ setting up


def _gguf_template(path: Path) -> tuple[str | None, tuple[str, str], dict[str, Any]]:
    from tooltune.gguf.header import read_gguf_header

    metadata = read_gguf_header(path).metadata
    tokens = metadata.get("tokenizer.ggml.tokens") or []

    def token(key: str) -> str:
        token_id = metadata.get(key)
        return tokens[token_id] if isinstance(token_id, int) and 0 <= token_id < len(tokens) else ""

    template = chat_template.from_gguf_metadata(metadata)  # a named pair (Hermes) read as the server reads it
    return (template or None,
            (token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")), metadata)


def default_template_name(family: Family | None) -> str:
    """The training template a family trains with by default: ``qwen`` for Qwen2.5 (tooltune's default layout), the
    family's shipped template, else the model's own (``jinja``)."""
    if family is None:
        return "jinja"
    if family.name == "qwen2.5":
        return "qwen"
    return family.name if family.shipped_template else "jinja"


def open_backends(model: Path | None = None, gguf: Path | None = None, modelfile: Path | None = None,
                  template: str | None = None, family: str | None = None, thinking: str = "keep",
                  tool_view: str = "as_given", go_cache: Path | None = None) -> Backends:
    """Every backend's template for a model folder and/or a GGUF (and optionally a Modelfile)."""
    from tooltune.chat_template import load_from_tokenizer_dir
    from tooltune.data.tokenizer import load_tokenizer
    from tooltune.families import detect
    from tooltune.families.family import FAMILIES
    from tooltune.serve.go_template import NEEDS_GO, build_renderer
    from tooltune.serve.modelfile import ModelfileError, go_template_for, parse_modelfile
    from tooltune.templates import get_template

    if model is None and gguf is None:
        raise BackendCheckError("give a model folder (--model_name_or_path) and/or a GGUF (--gguf)")
    for path in (model, gguf, modelfile):
        if path is not None and not path.exists():
            raise BackendCheckError(f"{path}: no such file or folder")
    if model is not None and model.is_file() and model.suffix == ".gguf":
        model, gguf = (None, model) if gguf is None else (model, gguf)
    sources: dict[str, str] = {}
    gguf_template, gguf_tokens, metadata = (None, ("", ""), {})
    if gguf is not None:
        gguf_template, gguf_tokens, metadata = _gguf_template(gguf)
        sources["gguf"] = f"{gguf} (tokenizer.chat_template)" if gguf_template else \
            f"{gguf} carries no tokenizer.chat_template"
    else:
        sources["gguf"] = "not checked: no GGUF given (--gguf)"
    tokenizer = load_tokenizer(model if model is not None else gguf)
    hf_template = load_from_tokenizer_dir(model) if model is not None else None
    if model is None:
        sources["hf"] = "not checked: no model folder given (--model_name_or_path)"
    elif hf_template is None:
        sources["hf"] = f"not checked: {model} carries no chat template"
    else:
        sources["hf"] = f"{model} (its tokenizer's chat template)"
    if family is not None and family not in FAMILIES:
        raise BackendCheckError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    found = FAMILIES[family] if family else (detect.from_template(hf_template or gguf_template)
                                             or detect.from_tokenizer(tokenizer)
                                             or detect.from_gguf_metadata(metadata))
    name = template or default_template_name(found)
    training = get_template(name, tokenizer, thinking=thinking, tool_view=tool_view)
    inner = getattr(training, "inner", training)
    training_jinja = training.jinja_chat_template
    if family is None:
        found = getattr(inner, "family", None) or detect.from_template(training_jinja) or found
    sources["training"] = f"--template {name}" + (f" --tool_view {tool_view}" if tool_view != "as_given" else "")
    backends = Backends(template=training, family=found, hf=hf_template, gguf=gguf_template,
                        hf_tokens=(getattr(tokenizer, "bos_token", None) or "", getattr(tokenizer, "eos_token", None)
                                   or ""),
                        gguf_tokens=gguf_tokens, serve_template=gguf_template or hf_template or training_jinja,
                        sources=sources)
    if gguf is not None and gguf_template is None:
        backends.gguf = ""  # rendered as nothing: a mismatch (llama.cpp would fall back to a built-in template)
    backends.go_jinja = gguf_template or hf_template or training_jinja
    if modelfile is not None:
        try:
            backends.go_template = parse_modelfile(modelfile).template
        except ModelfileError as exc:
            raise BackendCheckError(str(exc)) from None
        sources["modelfile"] = f"{modelfile} (TEMPLATE)" if backends.go_template else \
            f"not checked: {modelfile} has no TEMPLATE (Ollama renders the GGUF's Jinja)"
    else:
        try:
            go_family, backends.go_template = go_template_for(backends.go_jinja)
            sources["modelfile"] = f"the TEMPLATE `tooltune modelfile` writes ({go_family})"
        except ModelfileError:
            sources["modelfile"] = "not checked: no Go TEMPLATE is known for this chat template (`tooltune " \
                                   "modelfile` refuses it too)"
    if backends.go_template is not None:
        backends.go_binary = build_renderer(go_cache)
        if backends.go_binary is None:
            sources["modelfile"] = NEEDS_GO
    return backends


def run_check(conversations: list[Conversation], backends: Backends) -> CheckReport:
    family = backends.family.name if backends.family is not None else "unknown family"
    report = CheckReport(family, backends.sources.get("training", ""), dict(backends.sources))
    report.rows = check_conversations(conversations, backends)
    return report


# ------------------------------------------------------------------------------------------------ showing


_MARKS = {"equal": "[green]same[/green]", "known": "[yellow]known[/yellow]", "mismatch": "[red]DIFFERS[/red]",
          "not checked": "[dim]not checked[/dim]"}


def table_rows(report: CheckReport) -> list[list[str]]:
    """Plain rows (conversation, texts, one cell per pair, parse) for the console table and the pipeline report."""
    out = []
    for row in report.rows:
        if row.error:
            out.append([row.where, "0", *(["-"] * len(PAIRS)), f"refused by training: {row.error}"])
            continue
        cells = []
        for pair in PAIRS:
            result = row.pairs[pair]
            cell = result.status
            if result.difference is not None:
                cell += f" @{result.difference.position} ({result.difference.item})"
            cells.append(cell)
        parse = row.parse.status + f" ({row.parse.replies} replies, {row.parse.calls} calls)"
        out.append([row.where, str(row.texts), *cells, parse])
    return out


def details(report: CheckReport) -> list[str]:
    """The first difference of every failing pair with context, and each known difference's reason once."""
    lines: list[str] = []
    reasons: dict[str, int] = {}
    for row in report.rows:
        for pair in PAIRS:
            result = row.pairs[pair]
            if result.status == "known":
                reasons[f"{PAIR_LABELS[pair]}: {result.note}"] = reasons.get(
                    f"{PAIR_LABELS[pair]}: {result.note}", 0) + 1
            if result.status == "mismatch":
                lines.append(f"{row.where}: {PAIR_LABELS[pair]} differs" + (f" ({result.note})" if result.note else ""))
                if result.difference is not None:
                    d = result.difference
                    lines.append(f"  {d.item}, first difference at character {d.position}:")
                    lines.append(f"    training: {d.expected!r}")
                    lines.append(f"    {pair:>8}: {d.got!r}")
        if row.parse.status == "mismatch" and not row.error:
            lines.append(f"{row.where}: parsers disagree: {row.parse.note}")
    lines += [f"known ({count} conversations) {reason}" for reason, count in reasons.items()]
    return lines


def print_report(report: CheckReport, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"check-backends: {report.family}, {report.template}", show_lines=False)
    for column in ("conversation", "texts", *(PAIR_LABELS[p] for p in PAIRS), "parse (5 paths)"):
        table.add_column(column, overflow="fold")
    for cells in table_rows(report):
        styled = [escape(cells[0]), cells[1]]
        for cell in cells[2:]:
            status = next((s for s in _MARKS if cell.startswith(s)), None)
            styled.append(_MARKS[status] + escape(cell[len(status):]) if status else escape(cell))
        table.add_row(*styled)
    console.print(table)
    for backend, source in report.sources.items():
        console.print(f"  {backend}: {escape(source)}")
    for line in details(report):
        console.print(escape(line))
    console.print(report.summary_line())


# ------------------------------------------------------------------------------------------------ in the pipeline

PIPELINE_LIMIT = 20  # conversations the pipeline checks: the gate's figures at a cost of seconds


def pipeline_metrics(data_args: Any, model: Path, gguf: Path, modelfile: Path | None,
                     limit: int = PIPELINE_LIMIT) -> dict[str, Any]:
    """The check on the first ``limit`` conversations of the training data, as the figures the report shows."""
    import dataclasses

    from tooltune.data.loader import load_conversations

    data = dataclasses.replace(data_args, max_samples=limit, strict=False)
    conversations = load_conversations(data).conversations[:limit]
    backends = open_backends(model, gguf, modelfile, template=data_args.template, thinking=data_args.thinking,
                             tool_view=data_args.tool_view)
    report = run_check(conversations, backends)
    header = ["conversation", "texts", *(PAIR_LABELS[p] for p in PAIRS), "parse (5 paths)"]
    return {"summary": report.summary_line(), "mismatches": report.mismatches, "sources": report.sources,
            "header": header, "rows": table_rows(report), "details": details(report)}
