"""The data layer: datasets → validated Conversations, and the train/validation split.

Public API (other stages code against these names; keep them stable):

    DataArguments            dataclass with LLaMA-Factory's keys: dataset, dataset_dir, template, cutoff_len,
                             cutoff_policy ("safe" | "lf"), max_samples, val_size, seed, train_on_prompt,
                             mask_history, default_system, packing, strict
    ModelPathArguments       model_name_or_path (HF folder or .gguf; default: the embedded GGUF), trust_remote_code
    load_conversations(args) -> LoadReport(conversations, rejected: [Rejection(file, index, reason)], datasets)
                             registry names from dataset_dir/dataset_info.json or .json/.jsonl paths; sharegpt,
                             OpenAI messages and alpaca records; ``strict`` turns any rejection into DataError
    split_train_val(conversations, val_size, seed) -> (train, val)   deterministic, both in dataset order
    load_tokenizer(model_name_or_path=None, trust_remote_code=False) -> a transformers tokenizer
    prepare_dataset(args, tokenizer, on_progress=None) -> PreparedDataset(load, template, train, val)
                             load → split_train_val → get_template → encode_dataset (EncodeReports)
    DataError, Rejection

Record indices are 0-based positions in their file (for .jsonl, line order; blank lines are not records).
"""

from tooltune.data.args import BUNDLED_DATA_DIR, DataArguments, ModelPathArguments
from tooltune.data.errors import DataError, Rejection
from tooltune.data.loader import DatasetCount, LoadReport, load_conversations, load_dataset
from tooltune.data.prepare import PreparedDataset, prepare_dataset
from tooltune.data.split import split_train_val
from tooltune.data.tokenizer import load_tokenizer

__all__ = [
    "BUNDLED_DATA_DIR",
    "DataArguments",
    "DataError",
    "DatasetCount",
    "LoadReport",
    "ModelPathArguments",
    "PreparedDataset",
    "Rejection",
    "load_conversations",
    "load_dataset",
    "load_tokenizer",
    "prepare_dataset",
    "split_train_val",
]
