"""SentencePiece vocabularies (``tokenizer.model``: Mistral v0.3, Gemma, Llama 2) as GGUF metadata.

llama.cpp's converter writes these as its "llama" tokenizer: every piece with its score and type from the
SentencePiece model, then the added tokens of ``tokenizer_config.json`` on top (score -1000, control or
user-defined), and the special ids, add-BOS/EOS flags and chat template that gguf-py's ``SpecialVocab`` reads. We
write the same, so llama.cpp's C++ SentencePiece tokenizer sees the same file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import gguf

from tooltune.gguf.tokenizer_meta import TokenizerMetaError, looks_like_control


class PieceType(IntEnum):
    """llama.cpp's token types for SentencePiece vocabularies (the values of SentencePiece's own piece types)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


@dataclass
class SpmVocab:
    tokens: list[bytes]
    scores: list[float]
    token_types: list[int]
    special: gguf.SpecialVocab
    add_space_prefix: bool | None = None
    add_special: dict[str, bool] = field(default_factory=dict)

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(self.tokens)
        writer.add_token_scores(self.scores)
        writer.add_token_types(self.token_types)
        self.special.add_special_token.update(self.add_special)
        self.special.add_to_gguf(writer, quiet=True)


def _pieces(model_file: Path, vocab_size: int | None) -> tuple[list[bytes], list[float], list[int]]:
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:  # a dependency of tooltune; only a broken install lacks it
        raise TokenizerMetaError(f"{model_file}: reading a SentencePiece model needs the sentencepiece "
                                 f"package") from None
    processor = SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(model_file))
    except (OSError, RuntimeError) as exc:
        raise TokenizerMetaError(f"{model_file}: not a readable SentencePiece model ({exc})") from None
    n_pieces = processor.vocab_size()
    size = vocab_size or n_pieces
    # Ids the embedding has beyond the model's pieces stay placeholders, as in llama.cpp.
    tokens = [f"[PAD{i}]".encode() for i in range(size)]
    scores = [-10000.0] * size
    types = [int(PieceType.UNUSED)] * size
    for token_id in range(min(n_pieces, size)):
        kind = PieceType.NORMAL
        if processor.IsUnknown(token_id):
            kind = PieceType.UNKNOWN
        elif processor.IsControl(token_id):
            kind = PieceType.CONTROL
        elif processor.IsUnused(token_id):
            kind = PieceType.UNUSED
        elif processor.IsByte(token_id):
            kind = PieceType.BYTE
        tokens[token_id] = processor.IdToPiece(token_id).encode()
        scores[token_id] = processor.GetScore(token_id)
        types[token_id] = int(kind)
    return tokens, scores, types


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TokenizerMetaError(f"{path}: not valid JSON ({exc})") from None


def read_spm_vocab(model_dir: Path, vocab_size: int | None, chat_template: str | None = None) -> SpmVocab:
    """The SentencePiece vocab of ``model_dir`` with its added tokens; ``chat_template`` overrides the folder's."""
    tokens, scores, types = _pieces(model_dir / "tokenizer.model", vocab_size)
    size = len(tokens)

    added_file = model_dir / "added_tokens.json"
    if added_file.is_file():
        for content, token_id in _read_json(added_file).items():
            if isinstance(token_id, int) and 0 <= token_id < size:
                tokens[token_id] = content.encode()
                scores[token_id] = -1000.0
                types[token_id] = int(PieceType.USER_DEFINED)

    config_file = model_dir / "tokenizer_config.json"
    config = _read_json(config_file) if config_file.is_file() else {}
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        token_id = int(key)
        if token_id >= size:
            continue
        content: str = entry["content"]
        if entry.get("special") or looks_like_control(content):
            types[token_id] = int(PieceType.CONTROL)
        else:
            content = content.replace("\u2581", " ")  # llama.cpp expects user-defined tokens pre-normalised
            types[token_id] = int(PieceType.USER_DEFINED)
        scores[token_id] = -1000.0
        tokens[token_id] = content.encode()

    special = gguf.SpecialVocab(model_dir, n_vocab=size)
    if chat_template is not None:
        special.chat_template = chat_template
    add_prefix = config.get("add_prefix_space")
    return SpmVocab(tokens, scores, types, special, add_prefix if isinstance(add_prefix, bool) else None)


def read_llama_hf_vocab(model_dir: Path, chat_template: str | None = None) -> SpmVocab:
    """A SentencePiece-style BPE tokenizer.json (byte fallback, ``▁`` for spaces) without its tokenizer.model, as
    ``save_pretrained`` leaves a Mistral or Llama 2 fine-tune: llama.cpp rebuilds the "llama" vocab from the HF
    tokenizer through gguf-py's ``LlamaHfVocab``, and so do we."""
    try:
        vocab = gguf.LlamaHfVocab(model_dir)
    except (FileNotFoundError, TypeError) as exc:
        raise TokenizerMetaError(f"{model_dir / 'tokenizer.json'}: not a SentencePiece-style BPE ({exc})") from None
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(int(kind))
    special = gguf.SpecialVocab(model_dir, n_vocab=len(tokens))
    if chat_template is not None:
        special.chat_template = chat_template
    config_file = model_dir / "tokenizer_config.json"
    config = _read_json(config_file) if config_file.is_file() else {}
    add_prefix = config.get("add_prefix_space")
    return SpmVocab(tokens, scores, types, special, add_prefix if isinstance(add_prefix, bool) else None)
