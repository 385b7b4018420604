"""attnlab.data: corpora (Shakespeare, cached; user text), tokenizers, LM batches, synthetic tasks."""

from attnlab.data.batches import LMBatches, encode_corpus, eval_batches, split_tokens
from attnlab.data.corpus import fetch_shakespeare, load_text, read_text, shakespeare_text, text_sha256
from attnlab.data.synthetic import (
    IGNORE_INDEX,
    SYNTHETIC_TASKS,
    TaskData,
    copy_first,
    copy_last,
    count_ones,
    max_retrieval,
    max_retrieval_continuous,
    passkey,
)
from attnlab.data.tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = [
    "IGNORE_INDEX", "SYNTHETIC_TASKS", "ByteTokenizer", "HFTokenizer", "LMBatches", "TaskData", "copy_first",
    "copy_last", "count_ones", "encode_corpus", "eval_batches", "fetch_shakespeare", "load_text",
    "load_tokenizer", "max_retrieval", "max_retrieval_continuous", "passkey", "read_text", "shakespeare_text",
    "split_tokens", "text_sha256",
]
