"""Preference data and the generated demo data (deterministic, grounded, readable by our readers)."""
from __future__ import annotations

import json
import re

import pytest
from omegaconf import OmegaConf

from saul.config.schema import STAGES, RunConfig
from saul.posttrain.demo_data import (FLAWS, demo_conversations, demo_preference_pairs, document_facts,
                                      write_jsonl)
from saul.posttrain.instruct_data import build_instruct_dataset, read_instruct_files
from saul.posttrain.jsonl_records import PostTrainDataError
from saul.posttrain.preference_data import build_preference_dataset, read_preference_files
from saul.data.synthetic import generate_document
from tests.unit.posttrain_fixtures import tokenizer


def test_demo_data_is_a_pure_function_of_the_seed():
    assert demo_conversations(40, 5) == demo_conversations(40, 5)
    assert demo_conversations(40, 5)[:10] == demo_conversations(10, 5)  # example i ignores the count
    assert demo_conversations(40, 5) != demo_conversations(40, 6)
    assert demo_preference_pairs(9, 5) == demo_preference_pairs(9, 5) != demo_preference_pairs(9, 6)


def test_legal_conversations_follow_the_three_turn_recipe_grounded_in_the_document():
    convs = demo_conversations(60, 5, general_fraction=0.25)
    legal = [c["messages"] for c in convs if len(c["messages"]) == 4]
    general = [c["messages"] for c in convs if len(c["messages"]) == 2]
    assert len(legal) + len(general) == 60 and 5 <= len(general) <= 30
    for i, conv in enumerate(convs):
        messages = conv["messages"]
        if len(messages) != 4:
            continue
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        facts = document_facts(generate_document(i, 5))
        excerpt = messages[0]["content"]
        # "Section 4.1" cites the clause numbered "4.1": the number is what the excerpt shows.
        assert facts.excerpt in excerpt and facts.identifier.split()[-1] in excerpt and facts.date in excerpt
        assert facts.identifier in messages[1]["content"] and facts.date in messages[1]["content"]
        assert facts.kind in ("contract", "statute", "opinion")


def test_preference_pairs_are_flawed_in_turn_and_the_flaw_is_visible():
    pairs = demo_preference_pairs(30, 5)
    assert [p["flaw"] for p in pairs[:6]] == list(FLAWS) * 2
    for i, pair in enumerate(pairs):
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        excerpt = pair["prompt"][0]["content"]
        facts = document_facts(generate_document(i, 5))
        assert chosen != rejected and facts.identifier in chosen
        if pair["flaw"] == "wrong citation":
            assert re.search(re.escape(facts.identifier) + r"(?!\d)", rejected) is None  # 4.10 is not 4.1
        if pair["flaw"] == "needless verbosity":
            assert chosen in rejected and len(rejected) > 2 * len(chosen)
        assert facts.excerpt in excerpt


def test_demo_files_go_through_the_real_readers_and_report_counts(tmp_path):
    tok = tokenizer()
    ift = write_jsonl(tmp_path / "ift.jsonl", demo_conversations(24, 5))
    dataset = build_instruct_dataset(read_instruct_files([str(ift)]), tok, seq_len=512)
    assert dataset.counts.read == 24 and dataset.counts.dropped == 0 and dataset.counts.kept == 24
    pairs = write_jsonl(tmp_path / "dpo.jsonl", demo_preference_pairs(8, 5))
    prefs = build_preference_dataset(read_preference_files([str(pairs)]), tok, max_length=512)
    assert prefs.counts.read == 8 and prefs.counts.kept + prefs.counts.dropped == 8
    assert prefs.fingerprint == build_preference_dataset(read_preference_files([str(pairs)]), tok, 512).fingerprint


def test_string_and_conversation_pairs_tokenize_alike_and_the_prompt_can_be_implicit():
    tok = tokenizer()
    as_strings = {"prompt": "Is § 2 valid?", "chosen": "Yes.", "rejected": "No, never, not at all."}
    as_turns = {"prompt": [{"role": "user", "content": "Is § 2 valid?"}],
                "chosen": [{"role": "assistant", "content": "Yes."}],
                "rejected": [{"role": "assistant", "content": "No, never, not at all."}]}
    implicit = {"chosen": as_turns["prompt"] + as_turns["chosen"], "rejected": as_turns["prompt"] + as_turns["rejected"]}
    built = [build_preference_dataset([("f:1", r)], tok, 64).examples[0] for r in (as_strings, as_turns, implicit)]
    assert built[0] == built[1] == built[2]
    assert tok.decode(built[0]["prompt_ids"]) == "<s> [INST] Is § 2 valid? [/INST]"
    assert tok.decode(built[0]["chosen_ids"]) == " Yes.</s>"


def test_preference_truncation_and_drop_counts():
    tok = tokenizer()
    records = [("f:1", {"prompt": "Valid?", "chosen": "Yes.", "rejected": "No."}),
               ("f:2", {"prompt": "Valid?", "chosen": "Yes. " * 40, "rejected": "No."}),
               ("f:3", {"prompt": "court " * 60, "chosen": "Yes.", "rejected": "No."})]
    data = build_preference_dataset(records, tok, max_length=32)
    assert data.counts.as_dict() == {"read": 3, "kept": 2, "truncated": 1, "dropped": 1}
    cut = data.examples[1]
    assert len(cut["prompt_ids"]) + len(cut["chosen_ids"]) == 32
    batch = data.get_batch([0, 1])
    assert batch["input_ids"].shape[0] == 4 and int(batch["completion_mask"][:2].sum()) == len(
        data.examples[0]["chosen_ids"]) + len(cut["chosen_ids"])


@pytest.mark.parametrize("record, message", [
    ({"prompt": "q", "chosen": "a"}, "missing 'rejected'"),
    ({"chosen": "a", "rejected": "b"}, "missing 'prompt'"),
    ({"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}, "all be strings"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "chosen": [{"role": "assistant", "content": "b"}], "rejected": [{"role": "assistant", "content": "c"}]},
     "expected 'user'"),
])
def test_bad_preference_records_name_the_line(tmp_path, record, message):
    path = tmp_path / "dpo.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(PostTrainDataError) as err:
        build_preference_dataset(read_preference_files([str(path)]), tokenizer(), 64)
    assert f"{path}:1" in str(err.value) and message in str(err.value)


def test_stage_presets_carry_the_paper_defaults():
    base = OmegaConf.structured(RunConfig)
    ift = OmegaConf.merge(base, OmegaConf.load("saul/config/presets/stage/ift.yaml"))
    dpo = OmegaConf.merge(base, OmegaConf.load("saul/config/presets/stage/dpo.yaml"))
    assert (ift.optim.lr, ift.ift.epochs, ift.train.max_steps) == (1e-5, 1, 0)  # 0: one epoch, derived
    assert (dpo.optim.lr, dpo.dpo.beta, list(dpo.dpo.loss_type), dpo.dpo.epochs) == (1e-6, 0.1, ["sigmoid"], 1)
    assert "ift" in STAGES and "dpo" in STAGES
