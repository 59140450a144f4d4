"""Shared fixtures of the data-pipeline tests: the raw corpus and a KenLM model built by lmplz."""
import json
import os
import shutil
from pathlib import Path

import pytest

LEGALBENCH = Path(os.environ.get("SAUL_LEGALBENCH", Path(__file__).resolve().parents[2] / "shared/data/legalbench"))


@pytest.fixture(scope="session")
def raw_corpus(tmp_path_factory):
    """(root, planted) of saul.data.raw_corpus, with legal.arpa built by lmplz."""
    from saul.data.raw_corpus import write_raw_corpus

    root = tmp_path_factory.mktemp("raw")
    planted = write_raw_corpus(root, seed=0, num_docs=48, legalbench=LEGALBENCH if LEGALBENCH.is_dir() else None)
    if shutil.which("lmplz"):
        from saul.data.perplexity import build_model

        build_model([(root / "lm-train.txt").read_text(encoding="utf-8")], root / "legal.arpa")
    return root, json.loads((root / "planted.json").read_text())
