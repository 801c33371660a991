"""Real tokenizers and templates of the model families, rebuilt from the small files in fixtures/families/.

Only what tests need is stored (see fixtures/families/SOURCES.md): Llama 3.2's and Mistral's tokenizer.json
xz-compressed; Qwen3's tokenizer is Qwen2.5's plus its four added tokens; SmolLM3's is Llama 3.2's with SmolLM3's
added-token names and post-processor. Each rebuild was checked equal to the upstream file (ids of the families'
example renders and the saved JSON); ``family_tokenizer_dir`` writes them into a folder AutoTokenizer loads offline.
"""

from __future__ import annotations

import json
import lzma
import shutil
from pathlib import Path

from tooltune.families.family import FAMILIES

FIXTURES = Path(__file__).parent / "fixtures" / "families"
QWEN25_TOKENIZER = Path(__file__).parent / "fixtures" / "tokenizers" / "qwen2.5"
WITH_TOKENIZER = ("qwen3", "llama3.2", "mistral", "smollm3")


def upstream_template(family: str) -> str:
    """The family's own (upstream) chat template as its model ships it."""
    if family == "qwen2.5":
        return (QWEN25_TOKENIZER / "chat_template.jinja").read_text(encoding="utf-8")
    if family in ("qwen3", "qwen3-instruct-2507"):
        text = FAMILIES[family].template_text()  # shipped unchanged (checked by hash in the tests)
        assert text is not None
        return text
    return (FIXTURES / family / "chat_template.jinja").read_text(encoding="utf-8")


def _llama_tokenizer_json() -> dict:
    with lzma.open(FIXTURES / "llama3.2" / "tokenizer.json.xz", "rt", encoding="utf-8") as f:
        return json.load(f)


def family_tokenizer_dir(family: str, out: Path) -> Path:
    """A folder with ``family``'s tokenizer.json, tokenizer_config.json and upstream chat_template.jinja."""
    from tokenizers import AddedToken, Tokenizer

    out.mkdir(parents=True, exist_ok=True)
    source = FIXTURES / family
    if family == "qwen3":
        tokenizer = Tokenizer.from_file(str(QWEN25_TOKENIZER / "tokenizer.json"))
        config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
        for token_id in range(151665, 151669):  # the tokens Qwen3 adds to Qwen2.5's vocabulary
            spec = config["added_tokens_decoder"][str(token_id)]
            tokenizer.add_tokens([AddedToken(spec["content"], special=spec["special"], normalized=spec["normalized"],
                                             lstrip=spec["lstrip"], rstrip=spec["rstrip"])])
            assert tokenizer.token_to_id(spec["content"]) == token_id
        tokenizer.save(str(out / "tokenizer.json"))
    elif family == "llama3.2":
        (out / "tokenizer.json").write_text(json.dumps(_llama_tokenizer_json()), encoding="utf-8")
    elif family == "smollm3":
        data = _llama_tokenizer_json()
        config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
        for token in data["added_tokens"]:
            spec = config["added_tokens_decoder"].get(str(token["id"]))
            if spec:
                token.update({k: spec[k] for k in ("content", "lstrip", "rstrip", "normalized", "single_word",
                                                   "special")})
        data["post_processor"] = json.loads((source / "post_processor.json").read_text(encoding="utf-8"))
        (out / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    elif family == "mistral":
        with lzma.open(source / "tokenizer.json.xz", "rb") as f:
            (out / "tokenizer.json").write_bytes(f.read())
    else:
        raise ValueError(f"no tokenizer fixture for {family}")
    for name in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    (out / "chat_template.jinja").write_text(upstream_template(family), encoding="utf-8")
    return out


# Hermes 3's tokenizer is not in the reference set (only its tool_use template is): the tests build a Hermes-3-like
# one, Llama 3.2's with reserved special tokens renamed to the ChatML and tool tags Hermes 3 adds (the ids are
# illustrative; what the tests need is that each tag is one special token, as in Hermes 3).
HERMES3_TAGS = {128011: "<|im_start|>", 128012: "<|im_end|>", 128013: "<tool_call>", 128014: "</tool_call>",
                128015: "<tool_response>", 128016: "</tool_response>", 128017: "<tools>", 128018: "</tools>"}


def hermes3_tokenizer_dir(out: Path) -> Path:
    """A folder with a Hermes-3-like tokenizer (see HERMES3_TAGS) and Hermes 3's tool_use template."""
    out.mkdir(parents=True, exist_ok=True)
    data = _llama_tokenizer_json()
    for token in data["added_tokens"]:
        if token["id"] in HERMES3_TAGS:
            token["content"] = HERMES3_TAGS[token["id"]]
    (out / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
              "eos_token": "<|im_end|>", "clean_up_tokenization_spaces": True, "model_max_length": 131072}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out / "chat_template.jinja").write_text(upstream_template("hermes3"), encoding="utf-8")
    return out

