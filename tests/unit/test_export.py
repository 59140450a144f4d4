"""final/ written shard by shard (no rank gathers the whole model) in the layout transformers loads,
and swapped in so that a crash at any point leaves a loadable final/ (or none plus the old one)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from saul.config.compose import compose
from saul.train import export
from saul.train.model import build_model

REPO = Path(__file__).resolve().parents[2]
SHARD_GB = 0.0002  # 200 kB: the tiny model (1.4 MB) comes out in several shards


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensors(path: Path) -> dict:
    with safe_open(str(path), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def _tiny_model():
    cfg = compose(["stage=cpt", "model=tiny-mixtral", "site=local"], env={}).cfg
    model, _ = build_model(cfg.model, torch.device("cpu"), seed=7)
    return model


def _no_barrier():
    return None


def test_zero3_export_on_two_ranks_is_sharded_and_loads_with_the_trained_weights(tmp_path):
    from transformers import MixtralForCausalLM

    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "from-the-previous-export").write_text("old")
    port, env = _free_port(), dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu")
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "unit" / "export_worker.py"), str(rank), str(port),
                               str(tmp_path), str(SHARD_GB)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    final = tmp_path / "final"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "reference.pt"]  # old one gone, no leftovers
    index = json.loads((final / export.INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 4 and shards == sorted(p.name for p in final.glob("model-*.safetensors"))
    largest_group = 4 * 256 * 64 * 4  # one layer's fused gate_up experts (fp32): groups are never split
    assert all((final / s).stat().st_size <= SHARD_GB * 1e9 + largest_group + 4096 for s in shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for s in shards
                                                  for t in _tensors(final / s).values())

    model, info = MixtralForCausalLM.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    trained = torch.load(tmp_path / "reference.pt")  # DeepSpeed's own consolidated copy after the step
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(trained)
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    untrained = _tiny_model().state_dict()  # same seed as the worker's model before its step
    assert any(not torch.equal(loaded[k], untrained[k]) for k in trained)


def test_a_small_model_is_one_file_as_save_pretrained_writes_it(tmp_path):
    model = _tiny_model()
    reference = tmp_path / "hf"
    model.save_pretrained(reference)
    out = export.export_final(model, tmp_path / "stage", 5.0, 0, 1, None, _no_barrier, lambda x: [x])
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    ours, theirs = _tensors(out / "model.safetensors"), _tensors(reference / "model.safetensors")
    assert sorted(ours) == sorted(theirs)  # checkpoint names (per-expert w1/w2/w3), as transformers writes them
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_shards_follow_module_order_and_the_size_limit():
    groups = [export.Group(["a"], [], 60), export.Group(["b"], [], 50), export.Group(["c"], [], 250),
              export.Group(["d"], [], 10), export.Group(["e"], [], 30)]
    assert export.plan_shards(groups, 100) == [[0], [1], [2], [3, 4]]
    assert export.plan_shards(groups, 10 ** 9) == [[0, 1, 2, 3, 4]]
    assert export.shard_file_names(1) == ["model.safetensors"]
    assert export.shard_file_names(3)[2] == "model-00003-of-00003.safetensors"


def test_tied_weights_are_written_once():
    model = torch.nn.Sequential(torch.nn.Embedding(4, 2), torch.nn.Linear(2, 4, bias=False))
    model[1].weight = model[0].weight
    groups = export.parameter_groups(model)
    assert [g.names for g in groups] == [["0.weight"]]


def _dir(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(content)
    return path


def test_a_crash_between_the_renames_leaves_the_old_final_that_the_next_export_restores(tmp_path):
    _dir(tmp_path / export.OLD, "old")  # final/ renamed aside, the new one not yet in place
    _dir(tmp_path / export.TMP, "new, maybe incomplete")
    export.recover_final(tmp_path)
    assert (tmp_path / "final" / "config.json").read_text() == "old" and not (tmp_path / export.OLD).exists()


def test_a_crash_after_the_swap_keeps_the_new_final(tmp_path):
    _dir(tmp_path / "final", "new")
    _dir(tmp_path / export.OLD, "old")  # not yet removed
    export.recover_final(tmp_path)
    assert (tmp_path / "final" / "config.json").read_text() == "new" and not (tmp_path / export.OLD).exists()


def test_a_crash_while_writing_leaves_final_alone_and_the_next_export_replaces_it(tmp_path):
    _dir(tmp_path / "final", "old")
    _dir(tmp_path / export.TMP, "half written")
    model = _tiny_model()
    out = export.export_final(model, tmp_path, 5.0, 0, 1, None, _no_barrier, lambda x: [x])
    assert json.loads((out / "config.json").read_text())["architectures"] == ["MixtralForCausalLM"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_the_swap_renames_in_that_order(tmp_path, monkeypatch):
    """A crash right after the first rename: no final/, the previous one complete beside it."""
    _dir(tmp_path / "final", "old")
    _dir(tmp_path / export.TMP, "new")
    real_replace, calls = os.replace, []

    def crash_on_second(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:
            raise OSError("node lost")
        real_replace(src, dst)

    monkeypatch.setattr(export.os, "replace", crash_on_second)
    with pytest.raises(OSError):
        export.swap_in(tmp_path)
    assert calls == [("final", export.OLD), (export.TMP, "final")]
    assert not (tmp_path / "final").exists() and (tmp_path / export.OLD / "config.json").read_text() == "old"
    monkeypatch.setattr(export.os, "replace", real_replace)
    export.recover_final(tmp_path)
    assert (tmp_path / "final" / "config.json").read_text() == "old"


def test_a_tokenizer_beside_the_starting_model_brings_its_tokenizer_files_and_never_its_weights(tmp_path):
    """IFT/DPO take their tokenizer from the starting stage's final/: its weights, config and card stay there."""
    start, stage = tmp_path / "cpt-final", tmp_path / "ift"
    before = _tiny_model()
    before.save_pretrained(start)
    for name, text in {"tokenizer.json": "{}", "tokenizer_config.json": "{}", "special_tokens_map.json": "{}",
                       "chat_template.jinja": "[INST]", "README.md": "cpt's model card"}.items():
        (start / name).write_text(text)
    trained = _tiny_model()
    with torch.no_grad():
        next(trained.parameters()).add_(1.0)  # the weights this stage "trained"
    out = export.export_final(trained, stage, 5.0, 0, 1, start, _no_barrier, lambda x: [x])
    written = _tensors(out / export.SINGLE_FILE)
    assert any(not torch.equal(written[k], v) for k, v in _tensors(start / export.SINGLE_FILE).items())
    assert sorted(p.name for p in out.iterdir() if export.is_tokenizer_file(p.name) or p.suffix == ".jinja") == [
        "chat_template.jinja", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert not (out / "README.md").exists()
