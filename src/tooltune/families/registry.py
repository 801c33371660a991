"""One lookup for chat templates, like Ollama's ``template.Named()``: a name, a Jinja file or a model folder gives the
template text and the family it belongs to.

Names:
- ``qwen``: tooltune's training layout (LLaMA-Factory 0.9.5's ``qwen``), the same text ``--template qwen`` trains;
- ``qwen2.5``: Qwen2.5-Instruct's own template, as the model ships it;
- every family with a shipped template (``qwen3``, ``qwen3-instruct-2507``, ``mistral``, ``phi4-mini``, ``smollm3``,
  ``gemma3``): the upstream text, or the corrected one where upstream is broken for tools (see ``Family.template_fix``).
Families whose templates are not shipped (``llama3.2``, ``hermes3``: Llama licence) come from the model folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tooltune.chat_template import load_from_tokenizer_dir
from tooltune.families import detect
from tooltune.families.errors import FamilyError
from tooltune.families.family import FAMILIES, Family


@dataclass(frozen=True)
class ResolvedTemplate:
    source: str  # the Jinja text
    family: Family | None  # None: a template no family matches (rendered as given, parsed as Hermes)
    origin: str  # "name:qwen3", "file:/path", "folder:/path"
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _qwen_layout() -> str:
    from tooltune.templates.qwen import QWEN_DEFAULT_SYSTEM, QWEN_JINJA, jinja_string

    return QWEN_JINJA.replace("__DEFAULT_SYSTEM__", jinja_string(QWEN_DEFAULT_SYSTEM))


def _qwen25_upstream() -> str:
    return resources.files("tooltune").joinpath("resources/templates/qwen.jinja").read_text(encoding="utf-8")


def named_templates() -> dict[str, str]:
    """Every template name the registry knows, with what it is."""
    names = {
        "qwen": "tooltune's training layout (LLaMA-Factory qwen), what --template qwen trains",
        "qwen2.5": "Qwen2.5-Instruct's own chat template",
    }
    for family in FAMILIES.values():
        if family.shipped_template:
            names[family.name] = ("corrected: " + family.template_fix) if family.template_fix else "upstream"
    return names


def usage_hint() -> str:
    return (
        f"known names: {', '.join(named_templates())}; or pass a Jinja file (a .jinja holding the chat template) "
        "or a model folder whose tokenizer_config.json / chat_template.jinja carries one"
    )


def named(name: str) -> ResolvedTemplate:
    if name == "qwen":
        return ResolvedTemplate(_qwen_layout(), FAMILIES["qwen2.5"], "name:qwen")
    if name == "qwen2.5":
        return ResolvedTemplate(_qwen25_upstream(), FAMILIES["qwen2.5"], "name:qwen2.5")
    family = FAMILIES.get(name)
    if family is None:
        raise FamilyError(f"unknown template {name!r}; {usage_hint()}")
    text = family.template_text()
    if text is None:
        raise FamilyError(
            f"template {name!r} is not shipped with tooltune ({'; '.join(family.notes)}); pass the model folder or "
            "its chat_template.jinja instead"
        )
    return ResolvedTemplate(text, family, f"name:{name}")


def model_own(source: str, where: str | Path, origin: str) -> ResolvedTemplate:
    """A model's own template (from its folder or its GGUF); when it is a known-broken upstream template, the
    corrected one, with a warning — so whatever loads a model renders what training with that family renders."""
    family = detect.from_template(source)
    if family is not None and family.template_fix:
        fixed = family.template_text()
        if fixed is not None and fixed != source:
            warning = f"{where}: {family.name}'s own chat template is broken for tools; using tooltune's " \
                      f"corrected one ({family.template_fix})"
            return ResolvedTemplate(fixed, family, f"name:{family.name}", (warning,))
    return ResolvedTemplate(source, family, origin)


def from_folder(folder: Path, use_fixes: bool = True) -> ResolvedTemplate:
    """The folder's own template; when it is a known-broken upstream template, the corrected one (with a warning)."""
    source = load_from_tokenizer_dir(folder)
    if source is None:
        raise FamilyError(f"{folder}: no chat template (chat_template.jinja or tokenizer_config.json); {usage_hint()}")
    if use_fixes:
        return model_own(source, folder, f"folder:{folder}")
    return ResolvedTemplate(source, detect.from_template(source), f"folder:{folder}")


def resolve(value: str | Path, use_fixes: bool = True) -> ResolvedTemplate:
    """A template name, a Jinja file or a model folder (see module docstring); anything else is an error."""
    text = str(value)
    if text in named_templates() or text in FAMILIES:
        return named(text)
    path = Path(text).expanduser()
    if path.is_dir():
        return from_folder(path, use_fixes=use_fixes)
    if path.is_file():
        source = path.read_text(encoding="utf-8")
        return ResolvedTemplate(source, detect.from_template(source), f"file:{path}")
    raise FamilyError(f"{text!r}: not a bundled template name, a file or a model folder; {usage_hint()}")


def resolve_text(value: str | None) -> str | None:
    """Template text for an optional ``--chat-template`` value (None stays None: the model's own)."""
    return resolve(value).source if value else None


def resolve_chat_template(value: str | None, error: type[Exception] = FamilyError,
                          warn: Callable[[str], None] | None = None) -> str | None:
    """``--chat-template`` for every command that takes one (serve, eval, check-backends): a registry name, a Jinja
    file or a model folder; None stays None (the model's own). A bad value raises ``error`` (the command's error
    type) naming the flag; warnings (a known-broken folder template replaced) go to ``warn``."""
    if not value:
        return None
    try:
        resolved = resolve(value)
    except FamilyError as exc:
        raise error(f"--chat-template {value!r}: {exc}") from None
    for warning in resolved.warnings:
        if warn is not None:
            warn(warning)
    return resolved.source
