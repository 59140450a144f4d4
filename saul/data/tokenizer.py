"""A byte-level BPE tokenizer trained locally (HF `tokenizers`), loadable by transformers and trl.

Byte-level (GPT-2 style) means every string round-trips exactly: §, ¶, em dashes, curly quotes
and accented names never become <unk>. The directory we write holds:
    tokenizer.json           the whole tokenizer (the only file that defines token ids)
    tokenizer_config.json    special tokens + class, so AutoTokenizer/trl load it with no code
    special_tokens_map.json
The fingerprint is a SHA-256 over the canonical JSON of the parts of tokenizer.json that define
the encoding: packed datasets record it, so shards are never read with a tokenizer that did not
write them.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from saul.data.atomic import write_json_atomic, write_text_atomic
from saul.posttrain.chat_template import MIXTRAL_CHAT_TEMPLATE

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
SPECIAL_TOKENS = (BOS, EOS, UNK, PAD)  # ids 0, 1, 2, 3 in this order
TOKENIZER_FILE = "tokenizer.json"
# 256 byte symbols + the special tokens: anything smaller cannot represent every byte.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def _build_untrained() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: os.PathLike) -> Path:
    """Train on `texts` and write the tokenizer directory; returns `out_dir`.

    Deterministic: the same texts in the same order give a byte-identical tokenizer.json.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE} (256 bytes + "
                         f"{len(SPECIAL_TOKENS)} special tokens), got {vocab_size}")
    tok = _build_untrained()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        # The full byte alphabet up front: bytes unseen in training still encode.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / TOKENIZER_FILE, tok.to_str(pretty=True))
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD}
    write_json_atomic(out / "special_tokens_map.json", specials)
    write_json_atomic(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        # No BOS/EOS added by encode(): the packer places EOS itself, trl adds what it needs.
        "add_bos_token": False,
        "add_eos_token": False,
        # Keep decode() exact: the clean-up step would turn " ." into "." in legal text.
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
        # Mixtral's [INST] format, so IFT/DPO train the tiny model as the mixtral presets are.
        "chat_template": MIXTRAL_CHAT_TEMPLATE,
    })
    return out


def load_tokenizer(directory: os.PathLike):
    """The tokenizer as a `transformers.PreTrainedTokenizerFast` with bos/eos/unk/pad set."""
    from transformers import PreTrainedTokenizerFast  # lazy: transformers costs ~1.5 s to import

    directory = Path(directory)
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer here (run stage=prepare)")
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD}
    special_map = directory / "special_tokens_map.json"
    if special_map.is_file():  # Mixtral's tokenizer pads with <unk>: it has no <pad>
        specials.update(json.loads(special_map.read_text(encoding="utf-8")))
    return PreTrainedTokenizerFast(tokenizer_file=str(path), clean_up_tokenization_spaces=False,
                                   chat_template=MIXTRAL_CHAT_TEMPLATE, **specials)


# The parts of tokenizer.json that decide which ids a text becomes and how ids decode.
# Left out on purpose: post_processor (transformers installs an empty template on load; the
# packer encodes without special tokens), padding and truncation (call-time settings).
_FINGERPRINTED_KEYS = ("added_tokens", "normalizer", "pre_tokenizer", "model", "decoder")


def _fingerprint_json(text: str) -> str:
    spec = json.loads(text)
    canonical = json.dumps({k: spec.get(k) for k in _FINGERPRINTED_KEYS}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of the encoding-defining parts of the tokenizer's JSON; accepts a directory, a
    tokenizer.json path, a `tokenizers.Tokenizer` or a transformers fast tokenizer."""
    if isinstance(tokenizer, (str, os.PathLike)):
        path = Path(tokenizer)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        return _fingerprint_json(path.read_text(encoding="utf-8"))
    return _fingerprint_json(backend_tokenizer(tokenizer).to_str())


def backend_tokenizer(tokenizer: Any) -> Tokenizer:
    """The Rust `tokenizers.Tokenizer` behind any of the accepted tokenizer forms."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        path = Path(tokenizer)
        return Tokenizer.from_file(str(path / TOKENIZER_FILE if path.is_dir() else path))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return backend
    raise TypeError(f"not a fast tokenizer: {type(tokenizer).__name__} (need tokenizers.Tokenizer, "
                    "a transformers fast tokenizer, or a directory holding tokenizer.json)")


@dataclass(frozen=True)
class TokenizerInfo:
    """What the packer needs from a tokenizer, whatever form it came in."""

    backend: Tokenizer
    vocab_size: int
    eos_id: int
    fingerprint: str


def describe_tokenizer(tokenizer: Any) -> TokenizerInfo:
    if isinstance(tokenizer, TokenizerInfo):  # described once already (its fingerprint costs ~0.3 s at 32k tokens)
        return tokenizer
    backend = backend_tokenizer(tokenizer)
    eos_token = getattr(tokenizer, "eos_token", None) or EOS
    eos_id = backend.token_to_id(eos_token)
    if eos_id is None:
        raise ValueError(f"tokenizer has no end-of-sequence token {eos_token!r}")
    return TokenizerInfo(backend=backend, vocab_size=backend.get_vocab_size(with_added_tokens=True),
                         eos_id=eos_id, fingerprint=tokenizer_fingerprint(backend))
