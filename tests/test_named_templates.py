"""Named chat templates (Hermes 3 ships "default" and "tool_use"): a conversation with tools is rendered with
"tool_use" as transformers does, and a reply after a tool result is trained in the prompt a server renders for it."""

from __future__ import annotations

import json

import pytest
from family_fixtures import FIXTURES, family_tokenizer_dir

from tooltune import chat_template
from tooltune.conversation import Conversation
from tooltune.data import DataArguments, load_conversations
from tooltune.encode import IGNORE_INDEX, encode_dataset
from tooltune.templates import get_template

CHATML_DEFAULT = ("{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
                  "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def hermes_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    # Hermes 3 is Llama 3's tokenizer with ChatML and two named templates in tokenizer_config.json.
    folder = family_tokenizer_dir("llama3.2", tmp_path_factory.mktemp("hermes3"))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    tool_use = (FIXTURES / "hermes3" / "chat_template.jinja").read_text(encoding="utf-8")
    config["chat_template"] = [{"name": "default", "template": CHATML_DEFAULT},
                               {"name": "tool_use", "template": tool_use}]
    config_file.write_text(json.dumps(config), encoding="utf-8")
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def glaive() -> list[Conversation]:
    return load_conversations(DataArguments(dataset="glaive_toolcall_en_demo")).conversations[:12]


def client_tools(conv: Conversation) -> list[dict] | None:
    return [{"type": "function", "function": tool.spec} for tool in conv.tools] or None


def test_tool_conversations_use_tool_use_and_others_default(hermes_tokenizer, glaive) -> None:
    template = get_template("jinja", hermes_tokenizer)
    assert template.family is not None and template.family.name == "hermes3"
    with_tools = [c for c in glaive if c.tools]
    without = [c for c in glaive if not c.tools]
    assert with_tools and without
    for conv in glaive:
        expected = hermes_tokenizer.apply_chat_template(conv.template_messages(), tools=client_tools(conv),
                                                        tokenize=False)
        assert template.render_text(conv) == expected, conv.where()
    assert "<tools>" in template.render_text(with_tools[0]) and "<tools>" not in template.render_text(without[0])
    # Export, GGUF and vLLM take one template: it makes the same choice inside.
    single = template.jinja_chat_template
    for conv in glaive:
        assert chat_template.render(single, conv.template_messages(), tools=client_tools(conv),
                                    bos_token=hermes_tokenizer.bos_token) == template.render_text(conv), conv.where()


def test_every_reply_is_trained_in_the_prompt_a_server_renders(hermes_tokenizer, glaive) -> None:
    template = get_template("jinja", hermes_tokenizer)
    report = encode_dataset(glaive, template, cutoff_len=100_000, policy="safe")
    assert report.skipped == []
    after_results = 0
    for conv in glaive:
        positions = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
        views = template.views(conv)
        if len(views) == 1:
            continue
        for (text, spans), position in zip(views, positions, strict=True):
            prompt = template.render_prompt(Conversation(messages=conv.messages[:position], tools=conv.tools))
            (start, end), = spans
            assert text[:start] == prompt, conv.where()  # what the model sees when asked for this reply
            reply = text[start:end]
            assert reply.endswith("<|im_end|>\n") and "<tool_response>" not in reply
            after_results += conv.messages[position - 1].role == "tool"
    assert after_results > 0  # glaive has replies after tool results: the Hermes closing quirk was exercised
    for sample in report.samples:
        assert any(label != IGNORE_INDEX for label in sample.labels)


def test_a_template_whose_reply_cannot_be_located_is_still_refused(hermes_tokenizer) -> None:
    # A Jinja file whose generation prompt never appears before a reply: refused with the reason, not guessed.
    from tooltune.conversation import Message
    from tooltune.templates.base import TemplateError
    from tooltune.templates.jinja import JinjaTemplate

    odd = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
           "{% if add_generation_prompt %}<ASK>{% endif %}")
    template = JinjaTemplate(hermes_tokenizer, source=odd, name="jinja")
    with pytest.raises(TemplateError, match="cannot be located"):
        template.views(Conversation(messages=[Message("user", "hi"), Message("assistant", "hello")]))



def test_a_folder_with_named_templates_loads_as_one_that_keeps_tool_use(hermes_tokenizer, glaive) -> None:
    # What serving, the GGUF converter and vllm-command read from the folder.
    folder = hermes_tokenizer.name_or_path
    single = chat_template.load_from_tokenizer_dir(folder)
    assert single == get_template("jinja", hermes_tokenizer).jinja_chat_template
    conv = next(c for c in glaive if c.tools)
    assert "<tools>" in chat_template.render(single, conv.template_messages(), tools=client_tools(conv),
                                             bos_token=hermes_tokenizer.bos_token)


def test_a_gguf_with_named_templates_is_served_with_tool_use(tiny_llama_dir, tmp_path, glaive) -> None:
    """llama.cpp's converter writes a named pair as tokenizer.chat_template + tokenizer.chat_template.tool_use; the
    server, the Modelfile writer and check-backends read the pair as one template that keeps tool_use."""
    gguf = pytest.importorskip("gguf")
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    from tooltune.backend_check import _gguf_template
    from tooltune.engines import load_engine
    from tooltune.gguf.convert import convert_to_gguf
    from tooltune.serve.modelfile import read_gguf_chat_info

    plain = convert_to_gguf(tiny_llama_dir, tmp_path / "plain.gguf", "f16")
    tool_use = (FIXTURES / "hermes3" / "chat_template.jinja").read_text(encoding="utf-8")
    reader = gguf.GGUFReader(plain)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    named = tmp_path / "named.gguf"
    writer = gguf.GGUFWriter(named, arch=arch)
    pair = [{"name": "default", "template": CHATML_DEFAULT}, {"name": "tool_use", "template": tool_use}]
    copy_with_new_metadata(reader, writer, {"tokenizer.chat_template": MetadataDetails(gguf.GGUFValueType.STRING,
                                                                                        pair)}, [])
    assert gguf.GGUFReader(named).fields.get("tokenizer.chat_template.tool_use") is not None

    expected = chat_template.combine_named(CHATML_DEFAULT, tool_use)
    assert read_gguf_chat_info(named)[0] == expected
    assert _gguf_template(named)[0] == expected
    assert chat_template.split_named(expected) == (CHATML_DEFAULT, tool_use)
    from tooltune.serve.modelfile import go_template_for
    assert go_template_for(expected)[0] == "hermes3"  # the Modelfile follows the tool_use layout
    engine = load_engine(str(named), n_ctx=256)
    assert engine.chat_template == expected
    conv = next(c for c in glaive if c.tools)
    prompt = engine.render(conv.template_messages()[:1], tools=client_tools(conv))
    assert "<tools>" in prompt and conv.tools[0].name in prompt
    assert "<tools>" not in engine.render([{"role": "user", "content": "hi"}])
