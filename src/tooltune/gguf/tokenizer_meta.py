"""Tokenizer metadata for a GGUF file, written the way llama.cpp's own converter writes it.

llama.cpp re-implements each family's pre-tokenizer (the regex that splits text before BPE) in C++ and picks one by
the name in ``tokenizer.ggml.pre``. The converter recognises a tokenizer by encoding a fixed check text and hashing the
token ids: equal ids on that text mean the same pre-tokenizer. We do the same, with the hashes of the families we
convert, so a file we write selects the same C++ pre-tokenizer as one written by ``convert_hf_to_gguf.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf

from tooltune.chat_template import load_from_tokenizer_dir
from tooltune.errors import TooltuneError

# The text llama.cpp encodes to fingerprint a BPE pre-tokenizer: whitespace runs, emoji joiners, digit groups,
# several scripts and English contractions, i.e. every place where pre-tokenizer regexes disagree.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(token ids of CHECK_TEXT)) -> llama.cpp pre-tokenizer name, for the families of the architectures we
# convert (Llama 3.x / SmolLM2/3 / Qwen2 / Qwen2.5 / Qwen3 / Phi-4-mini / their distills). Facts read from
# llama.cpp 0.3.36's tables.
KNOWN_PRE_TOKENIZERS: dict[str, str] = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    # o200k_base (GPT-4o's split), the base of Phi-4-mini's vocabulary.
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
}

# Newer llama.cpp keys that the gguf release on PyPI has no constants for yet.
NORMALIZER_LOWERCASE_KEY = "tokenizer.ggml.normalizer.lowercase"
NORMALIZER_STRIP_ACCENTS_KEY = "tokenizer.ggml.normalizer.strip_accents"

SPECIAL_TOKEN_KINDS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


class TokenizerMetaError(TooltuneError):
    pass


def pre_tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the ids of CHECK_TEXT, special tokens included (as ``AutoTokenizer.encode`` gives them)."""
    return sha256(str(tokenizer.encode(CHECK_TEXT).ids).encode()).hexdigest()


def identify_pre_tokenizer(tokenizer: Any, model_dir: Path) -> str:
    fingerprint = pre_tokenizer_fingerprint(tokenizer)
    name = KNOWN_PRE_TOKENIZERS.get(fingerprint)
    if name is None:
        raise TokenizerMetaError(
            f"{model_dir}: unrecognised BPE pre-tokenizer (fingerprint {fingerprint}); llama.cpp would split text "
            f"differently from this tokenizer. Pass --tokenizer-pre NAME (e.g. llama-bpe, qwen2, smollm) if you know "
            f"which family it belongs to"
        )
    return name


def looks_like_control(token: str) -> bool:
    # Some checkpoints mark control tokens as non-special; llama.cpp treats these spellings as control regardless.
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


@dataclass
class TokenizerMeta:
    """Everything under ``tokenizer.ggml.*`` plus ``tokenizer.chat_template``."""

    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)
    add_special: dict[str, bool] = field(default_factory=dict)
    chat_template: str | None = None
    add_space_prefix: bool | None = None
    normalizer_lowercase: bool | None = None
    normalizer_strip_accents: bool | None = None

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        if self.merges:
            writer.add_token_merges(self.merges)
        for kind, token_id in self.special_ids.items():
            getattr(writer, f"add_{kind}_token_id")(token_id)
        for kind, value in self.add_special.items():
            getattr(writer, f"add_add_{kind}_token")(value)
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)
        if self.normalizer_lowercase is not None:
            writer.add_bool(NORMALIZER_LOWERCASE_KEY, self.normalizer_lowercase)
        if self.normalizer_strip_accents is not None:
            writer.add_bool(NORMALIZER_STRIP_ACCENTS_KEY, self.normalizer_strip_accents)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TokenizerMetaError(f"{path}: not valid JSON ({exc})") from None


def _vocab_and_types(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """The token list padded to the model's vocab size, with llama.cpp's token types."""
    by_id = {token_id: token for token, token_id in tokenizer.get_vocab(with_added_tokens=True).items()}
    if by_id and max(by_id) >= vocab_size:
        raise TokenizerMetaError(f"tokenizer has id {max(by_id)} but config.json vocab_size is {vocab_size}")
    added = tokenizer.get_added_tokens_decoder()
    tokens: list[str] = []
    types: list[int] = []
    for token_id in range(vocab_size):
        token = by_id.get(token_id)
        if token is None:
            # Rows the embedding has but the tokenizer never produces (Qwen pads its vocab to a multiple of 128).
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        if token_id in added:
            # llama.cpp assumes added tokens are already normalised; round-trip the ones the tokenizer normalises.
            if not added[token_id].normalized:
                ids = tokenizer.encode(token, add_special_tokens=False).ids
                token = tokenizer.decode(ids, skip_special_tokens=False)
            if added[token_id].special or looks_like_control(token):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


def _merges(tokenizer_json: dict[str, Any]) -> list[str]:
    merges = tokenizer_json.get("model", {}).get("merges") or []
    if not merges or isinstance(merges[0], str):
        return list(merges)
    # Since transformers 4.45 merges are pairs so that a part may hold a space; GGUF keeps "a b" strings and marks a
    # literal space inside a part as U+0120, the byte-level alphabet's space.
    return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair) for pair in merges]


def _normalizer_flags(normalizer: dict[str, Any] | None, flags: dict[str, bool]) -> None:
    if not normalizer:
        return
    kind = normalizer.get("type")
    if kind == "Lowercase":
        flags["lowercase"] = True
    elif kind == "StripAccents":
        flags["strip_accents"] = True
    elif kind == "BertNormalizer":
        for key in ("lowercase", "strip_accents"):
            if key in normalizer:
                flags[key] = normalizer[key]
    elif kind == "Sequence":
        for inner in normalizer.get("normalizers", []):
            _normalizer_flags(inner, flags)


def _add_special_from_post_processor(post_processor: dict[str, Any] | None, config: dict[str, Any]) -> dict[str, bool]:
    """Whether the tokenizer adds BOS/EOS on its own, read from its post-processor (a simple template at most)."""
    add: dict[str, bool] = {}
    if not post_processor:
        return add
    bos, eos = config.get("bos_token"), config.get("eos_token")
    bos = bos.get("content") if isinstance(bos, dict) else bos
    eos = eos.get("content") if isinstance(eos, dict) else eos
    for processor in post_processor.get("processors", [post_processor]):
        kind = processor.get("type")
        if kind == "ByteLevel":
            add.setdefault("bos", False)
            add.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            add.update(bos=True, eos=True, sep=True)
        elif kind == "TemplateProcessing":
            single = processor.get("single", [])
            if len(single) > 1:
                first = single[0].get("SpecialToken", {}).get("id")
                last = single[-1].get("SpecialToken", {}).get("id")
                if first:
                    add["bos"] = first == bos or first == config.get("cls_token")
                if last:
                    add["eos"] = last == eos
                if (sep := _adds_separator(processor.get("pair", []), first, last, config)) is not None:
                    add["sep"] = sep
    return add


def _special_id(piece: dict[str, Any]) -> str | None:
    return piece.get("SpecialToken", {}).get("id")


def _adds_separator(pair: list[dict[str, Any]], first: str | None, last: str | None,
                    config: dict[str, Any]) -> bool | None:
    """Whether a pair template puts a separator (sep or eos token) between A and B, as llama.cpp reads it: None when
    the template has nothing between A and B to judge."""
    start = 1 if first and pair and _special_id(pair[0]) == first else 0
    stop = -1 if last and pair and _special_id(pair[-1]) == last else None
    pair = pair[start:stop]
    if not pair or pair[0].get("Sequence", {}).get("id") != "A" or pair[-1].get("Sequence", {}).get("id") != "B":
        return None
    middle = pair[1:-1]
    if not middle:
        return None
    sep_or_eos = {_content(config.get("sep_token")), _content(config.get("eos_token"))} - {None}
    adds = _special_id(middle[0]) in sep_or_eos and not last
    if len(middle) == 2 and _special_id(middle[1]) in sep_or_eos:
        adds = True
    return adds


def _content(entry: Any) -> str | None:
    return entry.get("content") if isinstance(entry, dict) else entry


def _chat_template(model_dir: Path, config: dict[str, Any]) -> str | None:
    if isinstance(config.get("chat_template"), str):  # a config given in memory
        return config["chat_template"]
    return load_from_tokenizer_dir(model_dir, prefer="gguf")


def read_tokenizer_meta(
    model_dir: Path,
    vocab_size: int,
    model_config: dict[str, Any],
    chat_template: str | None = None,
    pre_tokenizer: str | None = None,
) -> TokenizerMeta:
    """Read the byte-level BPE tokenizer of ``model_dir`` (tokenizer.json) into GGUF metadata.

    ``chat_template`` overrides the tokenizer's own, so a GGUF can carry the exact template a model was trained with.
    """
    # The Rust `tokenizers` library reads tokenizer.json directly: the same vocab and ids as the HF tokenizer, without
    # importing transformers and torch (most of a small conversion's time).
    from tokenizers import Tokenizer

    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        if (model_dir / "tokenizer.model").is_file():
            raise TokenizerMetaError(
                f"{model_dir}: only a SentencePiece tokenizer.model found; tooltune converts byte-level BPE "
                f"tokenizers (tokenizer.json: Llama 3.x, SmolLM2, Qwen2/2.5/3)"
            )
        raise TokenizerMetaError(f"{model_dir}: no tokenizer.json (save the tokenizer next to the weights)")
    tokenizer_json = _read_json(tokenizer_file)
    if tokenizer_json.get("model", {}).get("type") != "BPE":
        raise TokenizerMetaError(f"{tokenizer_file}: model type {tokenizer_json.get('model', {}).get('type')!r}, "
                                 f"expected BPE")
    config_file = model_dir / "tokenizer_config.json"
    config = _read_json(config_file) if config_file.is_file() else {}

    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # the Rust error type is not importable
        raise TokenizerMetaError(f"{tokenizer_file}: cannot be loaded ({exc})") from None
    pre = pre_tokenizer or identify_pre_tokenizer(tokenizer, model_dir)
    tokens, types = _vocab_and_types(tokenizer, vocab_size)

    flags: dict[str, bool] = {}
    _normalizer_flags(tokenizer_json.get("normalizer"), flags)

    add_special = _add_special_from_post_processor(tokenizer_json.get("post_processor"), config)
    special_ids: dict[str, int] = {}
    added_by_content = {}
    for added in tokenizer_json.get("added_tokens", []):
        added_by_content.setdefault(added.get("content"), added.get("id"))
    for kind in SPECIAL_TOKEN_KINDS:
        if isinstance(config.get(f"add_{kind}_token"), bool):
            # The post-processor is what the tokenizer actually does; the config flag only fills a gap.
            add_special.setdefault(kind, config[f"add_{kind}_token"])
        entry = config.get(f"{kind}_token")
        content = entry.get("content") if isinstance(entry, dict) else entry
        if isinstance(content, str) and isinstance(added_by_content.get(content), int):
            special_ids[kind] = added_by_content[content]
    for kind in SPECIAL_TOKEN_KINDS:
        token_id = model_config.get(f"{kind}_token_id")
        if kind not in special_ids and isinstance(token_id, int) and 0 <= token_id < vocab_size:
            special_ids[kind] = token_id

    add_prefix = config.get("add_prefix_space")
    return TokenizerMeta(
        pre=pre,
        tokens=tokens,
        token_types=types,
        merges=_merges(tokenizer_json),
        special_ids=special_ids,
        add_special=add_special,
        chat_template=chat_template if chat_template is not None else _chat_template(model_dir, config),
        add_space_prefix=add_prefix if isinstance(add_prefix, bool) else None,
        normalizer_lowercase=flags.get("lowercase"),
        normalizer_strip_accents=flags.get("strip_accents"),
    )
