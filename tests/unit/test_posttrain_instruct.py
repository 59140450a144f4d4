"""IFT data: Mixtral chat format, assistant-only labels, truncation / drop counts, packing."""
from __future__ import annotations

import json

import pytest
import torch

from saul.posttrain.chat_template import (MIXTRAL_CHAT_TEMPLATE, MIXTRAL_TRAINING_CHAT_TEMPLATE,
                                          training_chat_template)
from saul.posttrain.instruct_data import (IGNORE, build_examples, build_instruct_dataset,
                                          read_instruct_files, to_messages, tokenize_conversation)
from saul.posttrain.jsonl_records import PostTrainDataError
from tests.unit.posttrain_fixtures import tiny_model, tokenizer

CONVERSATION = [
    {"role": "system", "content": "Answer as a lawyer."},
    {"role": "user", "content": "What is § 25-1230?"},
    {"role": "assistant", "content": "(a) A definitions section."},
    {"role": "user", "content": "Why?"},
    {"role": "assistant", "content": "It opens with “In this chapter:” and defines terms."},
]


def _runs(labels):
    """Maximal runs of consecutive non-ignored labels."""
    runs, current = [], []
    for label in labels:
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


def test_training_template_renders_like_mixtrals():
    tok = tokenizer()
    assert tok.chat_template == MIXTRAL_CHAT_TEMPLATE  # the tiny tokenizer carries Mixtral's format
    plain = tok.apply_chat_template(CONVERSATION, tokenize=False)
    marked = tok.apply_chat_template(CONVERSATION, tokenize=False, chat_template=MIXTRAL_TRAINING_CHAT_TEMPLATE)
    assert plain == marked == ("<s> [INST] Answer as a lawyer.\n\nWhat is § 25-1230? [/INST] (a) A definitions "
                               "section.</s> [INST] Why? [/INST] It opens with “In this chapter:” and defines terms.</s>")
    assert training_chat_template(tok) == MIXTRAL_TRAINING_CHAT_TEMPLATE


def test_labels_cover_exactly_the_assistant_tokens_of_every_turn():
    tok = tokenizer()
    ids, labels = tokenize_conversation(tok, CONVERSATION, training_chat_template(tok))
    assert tok.decode(ids) == tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert all(label in (IGNORE, token) for token, label in zip(ids, labels))
    runs = _runs(labels)
    expected = [" " + m["content"] + "</s>" for m in CONVERSATION if m["role"] == "assistant"]
    assert [tok.decode(run) for run in runs] == expected
    # ... and nothing of the user / system turns is a target.
    masked = tok.decode([t for t, label in zip(ids, labels) if label == IGNORE])
    assert "Answer as a lawyer." in masked and "Why?" in masked and "definitions" not in masked


def test_prompt_completion_pairs_become_one_user_and_one_assistant_turn():
    as_pair = to_messages({"prompt": "Define tort.", "completion": "A civil wrong."}, "f:1")
    as_lists = to_messages({"prompt": [{"role": "user", "content": "Define tort."}],
                            "completion": [{"role": "assistant", "content": "A civil wrong."}]}, "f:2")
    sharegpt = to_messages({"conversations": [{"from": "user", "value": "Define tort."},
                                              {"from": "assistant", "value": "A civil wrong."}]}, "f:3")
    assert as_pair == as_lists == sharegpt == [{"role": "user", "content": "Define tort."},
                                               {"role": "assistant", "content": "A civil wrong."}]


def test_truncation_and_drop_counts():
    tok = tokenizer()
    fits = {"prompt": "Define tort.", "completion": "A civil wrong."}
    long_answer = {"prompt": "Define tort.", "completion": "A civil wrong. " * 40}
    long_prompt = {"prompt": "court " * 200, "completion": "Yes."}
    template = training_chat_template(tok)
    n_fits = len(tokenize_conversation(tok, to_messages(fits, "x"), template)[0])
    assert n_fits < 48
    records = [("f:1", fits), ("f:2", long_answer), ("f:3", long_prompt), ("f:4", fits)]
    examples, counts = build_examples(records, tok, seq_len=48)
    assert (counts.read, counts.kept, counts.truncated, counts.dropped) == (4, 3, 1, 0 + 1)
    assert [len(ids) for ids, _ in examples] == [n_fits, 48, n_fits]
    assert any(label != IGNORE for label in examples[1][1])  # the cut answer still teaches
    dataset = build_instruct_dataset(records, tok, seq_len=48)
    assert dataset.counts.as_dict()["dropped"] == 1
    assert "3 kept (1 truncated to 48 tokens), 1 dropped" in dataset.counts.describe(48)


def test_packing_keeps_every_kept_token_once_in_full_rows():
    tok = tokenizer()
    records = [(f"f:{i}", {"prompt": f"Question {i} about § {i}?", "completion": "Answer. " * (1 + i % 5)})
               for i in range(30)]
    examples, _ = build_examples(records, tok, seq_len=128)
    dataset = build_instruct_dataset(records, tok, seq_len=128)
    assert dataset.input_ids.shape == (len(dataset), 128) and len(dataset) < len(examples) / 2
    real = sum(len(ids) for ids, _ in examples)
    assert dataset.counts.tokens == real
    # Each conversation starts a position run; runs plus padding tails tile every row.
    starts = int((dataset.position_ids == 0).sum())
    pad_tails = sum(1 for row in dataset.input_ids if row[-1] == tok.pad_token_id)
    assert starts == len(examples) + pad_tails
    expected_targets = sum(sum(1 for label in labels[1:] if label != IGNORE) for _, labels in examples)
    assert dataset.counts.loss_tokens == expected_targets == dataset.loss_tokens(range(len(dataset)))


def test_a_packed_row_computes_what_its_conversations_compute_alone():
    """Block-diagonal attention from the position ids: nothing leaks across conversations."""
    tok = tokenizer()
    records = [("f:1", {"prompt": "Define tort.", "completion": "A civil wrong."}),
               ("f:2", {"prompt": "Is a verbal contract valid?", "completion": "Often, yes."}),
               ("f:3", {"prompt": "What is § 3?", "completion": "A rule."})]
    examples, _ = build_examples(records, tok, seq_len=128)
    dataset = build_instruct_dataset(records, tok, seq_len=128)
    assert len(dataset) == 1  # all three share one row
    model = tiny_model().eval()

    def summed_loss(input_ids, labels, position_ids=None):
        logits = model(input_ids=input_ids, position_ids=position_ids).logits[0, :-1]
        return torch.nn.functional.cross_entropy(logits, labels[0, 1:], ignore_index=IGNORE, reduction="sum")

    with torch.no_grad():
        batch = dataset.get_batch([0])
        packed = summed_loss(batch["input_ids"], batch["labels"], batch["position_ids"])
        alone = sum(summed_loss(torch.tensor([ids]), torch.tensor([labels])) for ids, labels in examples)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"text": "x"}', "needs 'messages', or 'prompt' and 'completion'"),
    ('{"messages": [{"role": "assistant", "content": "hi"}]}', "expected 'user'"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    ('{"messages": [{"role": "judge", "content": "hi"}]}', "role 'judge'"),
    ('{"prompt": "q", "completion": [{"role": "assistant", "content": "a"}]}', "both be strings"),
])
def test_bad_records_name_the_file_line_and_the_problem(tmp_path, line, message):
    path = tmp_path / "ift.jsonl"
    good = json.dumps({"prompt": "q", "completion": "a"})
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(PostTrainDataError) as err:
        build_examples(read_instruct_files([str(path)]), tokenizer(), seq_len=64)
    assert f"{path}:3" in str(err.value) and message in str(err.value)


def test_missing_file_and_nothing_fitting_are_errors(tmp_path):
    with pytest.raises(PostTrainDataError, match="no such file"):
        read_instruct_files([str(tmp_path / "absent.jsonl")])
    with pytest.raises(PostTrainDataError, match="no instruction example fits in seq_len=8"):
        build_instruct_dataset([("f:1", {"prompt": "court " * 20, "completion": "x"})], tokenizer(), seq_len=8)
