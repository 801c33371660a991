"""Where an assistant turn ends: the stop strings decoding uses and the end-of-turn token merge writes as EOS.

One detector for every stage. The template itself is asked first (a probe reply is rendered and the first special
token after it is the end of turn), so any template works; the family's known markers are added so a reply is also
cut at the family's other ends (Llama's ``<|eom_id|>``, Qwen's ``<|endoftext|>``).
"""

from __future__ import annotations

from collections.abc import Iterable

from tooltune.chat_template import ChatTemplateError, render
from tooltune.families import detect

_SENTINEL = "TOOLTUNE_END_OF_TURN_PROBE"
# End-of-turn markers of the common chat layouts, for templates no family matches (ChatML, Llama 3, Phi, Gemma).
_COMMON_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>")


def _probe_tail(template: str, bos_token: str, eos_token: str) -> str:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = render(template, messages, bos_token=bos_token, eos_token=eos_token)
    except ChatTemplateError:
        return ""
    return text.split(_SENTINEL, 1)[1] if _SENTINEL in text else ""


def end_of_turn_token(template: str, special_tokens: Iterable[str], bos_token: str = "",
                      eos_token: str = "") -> str | None:
    """The special token the template writes right after an assistant reply (``<|im_end|>`` for ChatML), or
    ``eos_token`` when none follows it."""
    specials = set(special_tokens)
    tail = _probe_tail(template, bos_token, eos_token)
    found = [(tail.find(tok), tok) for tok in specials if tok and tok in tail]
    if found:
        return min(found)[1]
    family = detect.from_template(template)  # a template the probe cannot render (Hermes' needs tools)
    known = [m for m in (family.end_of_turn if family else ()) if m in specials]
    return known[0] if known else (eos_token or None)


def stop_strings(template: str, eos_token: str = "", bos_token: str = "") -> list[str]:
    """Text markers that end a reply: the template's end of turn, the family's other ends, and EOS."""
    stops: list[str] = []
    family = detect.from_template(template)
    tail = _probe_tail(template, bos_token, eos_token).strip()
    if family is not None:
        first = [m for m in family.end_of_turn if tail.startswith(m)]
        stops += first + [m for m in family.end_of_turn if m not in first]
    for marker in _COMMON_MARKERS:  # unknown templates: the common markers the template writes
        if family is None and marker in template and marker not in stops:
            stops.append(marker)
    if eos_token and eos_token not in stops:
        stops.append(eos_token)
    return stops


def strip_end_of_turn(text: str, template: str, eos_token: str = "") -> str:
    """The reply without the end-of-turn marker a finished render carries (decoding stops before it)."""
    for marker in stop_strings(template, eos_token):
        if marker and marker in text:
            text = text[: text.index(marker)]
    return text
