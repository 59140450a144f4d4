"""Step 7a: the model's own tokenizer, as a `tokenizers` directory the packer and trainers read.

`data.tokenizer`:
    auto        model.path's tokenizer.json when model.path is set; the real Mixtral tokenizer
                for the mixtral-8x7b (v1, 32,000 tokens) and mixtral-8x22b (v3, 32,768) presets;
                the local byte-level BPE (saul.data.tokenizer) for anything else (tiny-mixtral)
    mistral-v1 / mistral-v3   the SentencePiece model the `mistral-common` package ships
    local-bpe   trained on the kept documents, data.tokenizer_vocab_size tokens
    DIR         a directory holding tokenizer.json
The SentencePiece model is converted to a `tokenizers` BPE here rather than by transformers:
transformers 5's converter splits on whitespace differently from SentencePiece (it gives other
ids for runs of spaces and a leading space, and silently returns an empty vocabulary for a
file not named *.model). Our conversion ranks each merge by the SentencePiece score of the
merged piece (SentencePiece's own BPE order), prepends "▁" and maps spaces to it like
SentencePiece's normalizer, and keeps byte fallback; `check_parity` compares ids with
sentencepiece itself on a sample and refuses the tokenizer on any difference.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

from saul.data.atomic import write_json_atomic, write_text_atomic
from saul.data.dataset import DatasetError
from saul.data.tokenizer import TOKENIZER_FILE

MISTRAL_FILES = {"mistral-v1": "tokenizer.model.v1",
                 "mistral-v3": "mistral_instruct_tokenizer_240323.model.v3"}
MODEL_TOKENIZERS = {"mixtral-8x7b": "mistral-v1", "mixtral-8x22b": "mistral-v3"}
SPM_FILE = "tokenizer.model"  # the SentencePiece original, kept next to tokenizer.json
PARITY_SAMPLE = 64


def choose(data_tokenizer: str, model_name: str, model_path: str) -> str:
    """What `auto` means for this model: a MISTRAL_FILES key, local-bpe, or a directory."""
    if data_tokenizer != "auto":
        return data_tokenizer
    if model_path:
        return model_path
    return MODEL_TOKENIZERS.get(model_name, "local-bpe")


def mistral_model_file(name: str) -> Path:
    try:
        import mistral_common
    except ImportError:
        raise DatasetError(f"data.tokenizer={name} needs the mistral-common package "
                           f"(pip install mistral-common): it ships Mixtral's tokenizer") from None
    path = Path(mistral_common.__file__).parent / "data" / MISTRAL_FILES[name]
    if not path.is_file():
        raise DatasetError(f"{path}: missing from the installed mistral-common")
    return path


def convert_sentencepiece(model_file: os.PathLike):
    """A `tokenizers.Tokenizer` giving SentencePiece's ids for the BPE model in `model_file`."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    if proto.trainer_spec.model_type != proto.trainer_spec.BPE:
        raise DatasetError(f"{model_file}: not a SentencePiece BPE model")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    merges = []
    for i, p in enumerate(proto.pieces):
        if p.type != p.NORMAL or len(p.piece) < 2:
            continue
        for k in range(1, len(p.piece)):
            left, right = p.piece[:k], p.piece[k:]
            if left in vocab and right in vocab:
                merges.append((-p.score, i, left, right))
    merges.sort()
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, _, a, b in merges], unk_token=unk,
                               byte_fallback=bool(proto.trainer_spec.byte_fallback), fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    specials = [p.piece for p in proto.pieces if p.type in (p.CONTROL, p.UNKNOWN)][:3]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def check_parity(tokenizer, model_file: os.PathLike, texts: Sequence[str]) -> int:
    """Refuse (DatasetError) unless `tokenizer` gives sentencepiece's ids on `texts`; returns
    how many texts were compared."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    sample = list(texts[:PARITY_SAMPLE]) + ["  leading spaces,  double  spaces\tand § 1983 — “quotes”"]
    for text in sample:
        ours = tokenizer.encode(text, add_special_tokens=False).ids
        theirs = sp.encode(text)
        if ours != theirs:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            raise DatasetError(f"converted tokenizer differs from sentencepiece ({Path(model_file).name}) "
                               f"at token {at} of {text[:60]!r}: refusing to tokenize with it")
    return len(sample)


def write_directory(tokenizer, out_dir: Path, bos: str, eos: str, unk: str, pad: str,
                    spm_file: Optional[Path] = None) -> Path:
    """tokenizer.json + transformers config, like saul.data.tokenizer.train_tokenizer writes,
    with Mixtral-Instruct's chat template: IFT/DPO load the dataset's tokenizer directory, and a
    bare tokenizer.model carries no template."""
    from saul.posttrain.chat_template import MIXTRAL_CHAT_TEMPLATE

    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / TOKENIZER_FILE, tokenizer.to_str(pretty=True))
    specials = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad}
    write_json_atomic(out_dir / "special_tokens_map.json", specials)
    write_json_atomic(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", **specials, "add_bos_token": False,
        "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000, "chat_template": MIXTRAL_CHAT_TEMPLATE})
    if spm_file is not None:
        shutil.copyfile(spm_file, out_dir / SPM_FILE)
    return out_dir


def mistral_directory(name: str, out_dir: Path, sample: Sequence[str]) -> tuple[Path, int]:
    """Convert, check parity on `sample`, write; returns the directory and the texts compared."""
    model_file = mistral_model_file(name)
    tok = convert_sentencepiece(model_file)
    compared = check_parity(tok, model_file, sample)
    # Mixtral has no pad token: <unk> pads (masked out of the loss anyway), so no id is added.
    return write_directory(tok, out_dir, "<s>", "</s>", "<unk>", "<unk>", model_file), compared


def copy_directory(src: str, out_dir: Path) -> Path:
    path = Path(src)
    if not (path / TOKENIZER_FILE).is_file():
        raise DatasetError(f"tokenizer {src}: no {TOKENIZER_FILE} there (give a directory with a "
                           f"fast tokenizer, e.g. an HF model directory)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json", SPM_FILE):
        if (path / name).is_file():
            shutil.copyfile(path / name, out_dir / name)
    return out_dir
