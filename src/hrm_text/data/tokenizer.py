"""Byte-level BPE tokenizer with the HRM-Text special tokens (docs/ARCHITECTURE.md#special-tokens,
#tokenizer).

Why a thin wrapper around HF `tokenizers` instead of using it directly: the training code needs
the ids of `<boq>`, `<eoq>`, `<eoa>`, the condition tags and the pad token by *role*, and it must
be impossible for user text such as "<|im_end|>" to turn into a control token (a prompt injection
and a silent data bug). The wrapper encodes plain text with `encode_special_tokens=True` so special
strings inside text become ordinary bytes, and it builds the example layout in one place:

    prompt:   <boq> <cond_1> ... <cond_k> instruction-tokens <eoq>
    response: response-tokens <eoa>

The directory written by `save()` (tokenizer.json, tokenizer_config.json, special_tokens_map.json)
also loads with `transformers.AutoTokenizer.from_pretrained(dir)`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from hrm_text.data.records import CONDITIONS, iter_source_files, parse_condition, read_records

# Role -> token string. These are the strings of the released HRM-Text tokenizer
# (docs/ARCHITECTURE.md#special-tokens).
# The pad token is ours: `<|endoftext|>` is never produced from text (special) and is id 0 in a
# tokenizer trained by `train_tokenizer`, so zero-filled buffers are padding by construction.
SPECIAL_TOKENS: dict[str, str] = {
    "pad": "<|endoftext|>",
    "boq": "<|im_start|>",
    "eoq": "<|im_end|>",
    "eoa": "<|box_end|>",
    "direct": "<|object_ref_start|>",
    "cot": "<|object_ref_end|>",
    "noisy": "<|quad_start|>",
    "synth": "<|quad_end|>",
}

CONDITION_TOKENS: dict[str, str] = {c: SPECIAL_TOKENS[c] for c in CONDITIONS}

# docs/ARCHITECTURE.md#tokenizer: every digit is its own pre-token; no prefix space is added.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

DEFAULT_VOCAB_SIZE = 65536
MODEL_MAX_LENGTH = 4097


def _build_empty_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _iter_texts(files_or_texts: Iterable[str | os.PathLike] | str | os.PathLike) -> Iterator[str]:
    """Yield training texts: from JSONL/Parquet records (instruction and response), plain text
    files (line by line), or strings given directly."""
    if isinstance(files_or_texts, (str, os.PathLike)):
        files_or_texts = [files_or_texts]
    for item in files_or_texts:
        p = Path(item) if isinstance(item, (str, os.PathLike)) else None
        is_path = False
        if p is not None:
            try:
                is_path = len(str(item)) < 4096 and "\n" not in str(item) and p.exists()
            except OSError:
                is_path = False
        if not is_path:
            yield str(item)
            continue

        for f in iter_source_files([p]):
            if f.suffix in (".txt", ".md"):
                with open(f, encoding="utf-8-sig", errors="replace") as fh:  # -sig: a leading BOM is no text
                    for line in fh:
                        yield line
                continue
            for rec in read_records(f, report=None):
                yield rec.instruction
                yield rec.response


def train_tokenizer(
    files_or_texts: Iterable[str | os.PathLike] | str | os.PathLike,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    out_dir: str | os.PathLike | None = None,
    min_frequency: int = 2,
    max_texts: int | None = None,
    show_progress: bool = False,
) -> "TextTokenizer":
    """Train the paper's tokenizer: byte-level BPE, its split pattern, min frequency 2
    (docs/ARCHITECTURE.md#tokenizer).

    `files_or_texts` mixes paths (JSONL/Parquet record files or folders, .txt files) and raw
    strings. The 8 special tokens take ids 0..7 (pad first), then the 256 byte symbols, then merges.
    Saves to `out_dir` when given. `max_texts` bounds the number of texts read (BPE statistics
    saturate long before a large corpus is exhausted).
    """
    n_special = len(SPECIAL_TOKENS)
    if vocab_size < 256 + n_special:
        raise ValueError(f"vocab_size must be at least {256 + n_special} (256 bytes + {n_special} special tokens)")
    tok = _build_empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )

    def limited() -> Iterator[str]:
        for i, t in enumerate(_iter_texts(files_or_texts)):
            if max_texts is not None and i >= max_texts:
                return
            yield t

    tok.train_from_iterator(limited(), trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS.values()):
        assert tok.token_to_id(s) == i, "special tokens must take the first ids"
    out = TextTokenizer(tok)
    if out_dir is not None:
        out.save(out_dir)
    return out


class TextTokenizer:
    """The project's tokenizer: HF `tokenizers` BPE plus role-named special-token ids."""

    def __init__(self, tokenizer: Tokenizer, source_dir: str | None = None) -> None:
        self._tok = tokenizer
        self.source_dir = source_dir
        missing = [s for s in SPECIAL_TOKENS.values() if tokenizer.token_to_id(s) is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}; it was not built for HRM-Text")
        # Plain text never yields control tokens; see module docstring.
        self._tok.encode_special_tokens = True
        self.boq_id: int = tokenizer.token_to_id(SPECIAL_TOKENS["boq"])
        self.eoq_id: int = tokenizer.token_to_id(SPECIAL_TOKENS["eoq"])
        self.eoa_id: int = tokenizer.token_to_id(SPECIAL_TOKENS["eoa"])
        self.pad_id: int = tokenizer.token_to_id(SPECIAL_TOKENS["pad"])
        self.condition_ids: dict[str, int] = {c: tokenizer.token_to_id(SPECIAL_TOKENS[c]) for c in CONDITIONS}
        self.special_ids: dict[str, int] = {k: tokenizer.token_to_id(v) for k, v in SPECIAL_TOKENS.items()}

    # ---- persistence ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextTokenizer":
        """Load from a directory holding tokenizer.json (or that file itself)."""
        p = Path(path)
        f = p / "tokenizer.json" if p.is_dir() else p
        if not f.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {p} (create one with `hrm-text data tokenizer`)")
        return cls(Tokenizer.from_file(str(f)), source_dir=str(f.parent.resolve()))

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json.

        The `encode_special_tokens` runtime flag is switched off in the saved file so that
        transformers users who write chat templates as strings still get the control tokens.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._tok.encode_special_tokens = False
        try:
            self._tok.save(str(out / "tokenizer.json"))
        finally:
            self._tok.encode_special_tokens = True
        extra = [SPECIAL_TOKENS[k] for k in ("boq", "eoq", "eoa", *CONDITIONS)]
        special_map = {
            "bos_token": SPECIAL_TOKENS["boq"],
            "eos_token": SPECIAL_TOKENS["eoa"],
            "pad_token": SPECIAL_TOKENS["pad"],
            "additional_special_tokens": extra,
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": MODEL_MAX_LENGTH,
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,
            "add_eos_token": False,
            **special_map,
            "hrm_text": {"special_tokens": SPECIAL_TOKENS, "split_pattern": SPLIT_PATTERN},
        }
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
        self.source_dir = str(out.resolve())

    # ---- basic encode / decode -----------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (specials-as-text mode switched on)."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Plain text to ids. Special-token strings inside `text` are encoded as ordinary bytes."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Batch version of `encode` (runs in Rust; threads unless TOKENIZERS_PARALLELISM=false)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    # ---- example layout -------------------------------------------------------------------------
    def condition_prefix(self, condition: str | None = "direct") -> list[int]:
        """`<boq> <cond_1> ... <cond_k>`: the tokens before the instruction text."""
        return [self.boq_id] + [self.condition_ids[t] for t in parse_condition(condition)]

    def encode_prompt(self, instruction: str, condition: str = "direct") -> list[int]:
        """`<boq> <cond...> instruction <eoq>`: what the model sees before it answers."""
        return self.condition_prefix(condition) + self.encode(instruction) + [self.eoq_id]

    def encode_example(self, condition: str, instruction: str, response: str) -> tuple[list[int], list[int]]:
        """(prompt ids as in `encode_prompt`, response ids + [<eoa>]) for one training example."""
        return self.encode_prompt(instruction, condition), self.encode(response) + [self.eoa_id]

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size}, dir={self.source_dir!r})"
