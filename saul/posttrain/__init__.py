"""Post-training building blocks for IFT and DPO (SaulLM paper, section 4.3), built on trl.

    chat_template.py     Mixtral's [INST] template and its {% generation %}-marked training twin
    jsonl_records.py     strict JSONL reading: one error naming file:line, never a skipped line
    instruct_data.py     conversations / prompt-completion -> assistant-only labels -> packed rows
    preference_data.py   {"prompt","chosen","rejected"} -> tokenized pairs, trl's collator layout
    dpo_loss.py          trl's DPO loss and reference log-probs, run inside our step loop
    reference_logps.py   the reference log-prob table: computed once, stored, reloaded on resume
    demo_data.py         our own three-turn legal conversations, general instructions, flawed pairs

Design note: trl's Trainer classes or trl's pieces in our loop?
----------------------------------------------------------------
SFTTrainer and DPOTrainer are transformers Trainers. Checked against our contract (trl 1.16,
transformers 5):
- Stop vote on USR2 -> checkpoint -> exit 75: a TrainerCallback could all-reduce a stop flag at
  each step end and set should_save / should_training_stop, but the checkpoint written is the
  Trainer's own `checkpoint-N/` (written in place, no manifest, no hashes, no verification of
  the newest one before a resume), not our atomic, verified one; the exit code is ours to add.
- Exact data position: the Trainer resumes by replaying and discarding the seen batches of a
  sampler seeded by (seed, epoch); which sample comes next then depends on the world size and
  on the transformers/accelerate versions. Ours is a pure function of (samples consumed, global
  batch, dataset, seed), whatever the world size, and checked by fingerprint on every resume.
- Every rank's RNG: kept (rng_state_<rank>.pth). Ledger and heartbeat: could be callbacks.
- DeepSpeed ZeRO-3 on CPU with gloo: works through accelerate, but with accelerate's process
  group and DeepSpeed setup instead of our engine (saul/train/engine.py), so our refusals
  (other world size under ZeRO-3, other global batch, other data) and checkpoint layout would
  not apply, and every stage would have two engines and two checkpoint formats to keep exact.
- DPOTrainer's `precompute_ref_log_probs` caches in the datasets cache (~/.cache), keyed by the
  dataset fingerprint and a model hash, not in the stage directory; with `ref_model=None` and no
  precompute it reloads the reference from `config._name_or_path`.
So the Trainers would keep part of the contract and replace the rest with a second
implementation. We run trl's pieces inside our loop instead, each where it fits:
chat-template handling (`has_generation_markers`, `get_training_chat_template`,
`maybe_convert_to_chatml`, `extract_prompt`, `common_prefix_length`), the best-fit-decreasing
packer (`pack_dataset`), the collators' layouts (`DataCollatorForLanguageModeling` position ids,
`DataCollatorForPreference`), the fused LM head (`add_fused_lm_head`), and the DPO loss itself
(`DPOTrainer._compute_loss` and `compute_ref_log_probs`, called on a small host object; see
dpo_loss.py). `_compute_loss` is private API: tests/unit/test_posttrain_dpo.py pins it against a
hand computation and against a real DPOTrainer on the same batch, so a trl upgrade that changes
it fails there first.
"""
