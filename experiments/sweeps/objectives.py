"""Objectives ablation (T5-paper style): CLM vs prefix-LM vs span corruption vs MLM+NSP.

Each objective pretrains its natural model family for the same FLOPs on the same text
(the quickstart's corpus: the training demonstrations' turns, 2,000 episodes), with the
same tokenizer, width and depth per stack (d_model 128, 2 layers, 4 heads, MLP 512, RoPE):

  pretrain_clm            decoder, causal LM
  pretrain_prefix_lm      decoder, bidirectional prefix + causal suffix
  pretrain_span           encoder-decoder (2 + 2 layers), T5 span corruption (15%, mean 3)
  pretrain_mlm_nsp        encoder, BERT MLM (15%, 80/10/10) + NSP

Compute is matched by the FLOPs each run logs (lm/metrics.py step_cost over the padded
rows): the encoder-decoder sends each token through one stack only (inputs through the
encoder, targets through the decoder), the T5 paper's "same FLOPs as a decoder of one
stack's depth", but its rows cost 1.32x a decoder row, so it takes 227 steps to the
decoders' 300 (MLM+NSP: 268). Every run is then tuned on the same demonstrations
(assistant turns only, 300 steps) and scored with agent.evaluate on the held-out split (and on new tasks of the
training split, which separate the runs better while held-out success is near its floor):

  tune_clm, tune_prefix_lm   objective sft from the decoder (init_from, all params)
  tune_span                  objective sft_seq2seq from the encoder-decoder
  tune_mlm_nsp               objective sft on a decoder warm-started from the encoder's
                             embeddings and layers (train.init_from_params=matching; the
                             MLM/NSP heads are dropped; attention becomes causal)
  tune_scratch               objective sft with no pretraining (the reference)

Validation loss of the tuned runs (assistant-turn tokens of held-out demonstrations, same
tokenizer) is comparable across all five; pretraining losses are not (different targets).

Command:
  python -m experiments.ablation --ablation=experiments/sweeps/objectives.py --root=runs/objectives
Cost: measured 65 minutes on 2 shared CPU cores (about half alone).
Result: experiments/REPRODUCE.md ("Objectives").
"""
import os

PRETRAIN = "experiments/configs/quickstart_pretrain.py"
TUNE = "experiments/configs/quickstart_sft.py"
PRETRAIN_STEPS = 300
TUNE_STEPS = 300
EVAL_PER_FAMILY = 25

OBJECTIVES = {  # run suffix -> (pretraining objective, family, tuning objective, steps)
    # Steps equalise the pretraining FLOPs the runs log (5.07e12): a span-corruption step
    # costs 1.32x a decoder step (its encoder rows are full and the decoder adds targets),
    # an MLM+NSP step 1.12x (the MLM head's transform over every position).
    "clm": ("clm", "decoder", "sft", PRETRAIN_STEPS),
    "prefix_lm": ("prefix_lm", "decoder", "sft", PRETRAIN_STEPS),
    "span": ("span_corruption", "encoder_decoder", "sft_seq2seq", 227),
    "mlm_nsp": ("mlm_nsp", "encoder", "sft", 268),
}


def prepare(root: str) -> None:
  """The demonstrations JSONL and the pretraining text (experiments/quickstart.py's data stage)."""
  if not os.path.exists(os.path.join(root, "data", "demos.jsonl")):
    from experiments.quickstart import stage_data
    stage_data(root, {"demos": 2000})


def _data(root: str) -> dict:
  return {"data.data_dir": f"{root}/data/tfds"}


def get_ablation():
  root = "{root}"
  common = {**_data(root), "train.eval_every": 150, "train.checkpoint_every": 150}
  runs = []
  for name, (objective, family, _, steps) in OBJECTIVES.items():
    runs.append({"name": f"pretrain_{name}", "config": PRETRAIN, "overrides": {
        **common, "objective": objective, "model.family": family,
        "data.text_glob": f"{root}/data/corpus/*.txt", "train.num_steps": steps}})
  tokenizer = f"{root}/pretrain_clm/tokenizer.model"
  tune = {**common, "data.instructions_glob": f"{root}/data/demos.jsonl",
          "data.tokenizer_path": tokenizer, "train.num_steps": TUNE_STEPS}
  for name, (_, family, objective, _) in OBJECTIVES.items():
    overrides = {**tune, "objective": objective, "train.init_from": f"{root}/pretrain_{name}"}
    if family == "encoder":  # the encoder's layers warm-start a decoder
      overrides["train.init_from_params"] = "matching"
    else:
      overrides["model.family"] = family
    if family == "encoder_decoder":
      overrides["data.target_seq_len"] = 128  # one assistant turn (the agent asks for <= 96 tokens)
    runs.append({"name": f"tune_{name}", "config": TUNE, "overrides": overrides})
  runs.append({"name": "tune_scratch", "config": TUNE, "overrides": dict(tune)})
  evals = [{"run": r["name"], "args": ["--split=heldout", f"--num_per_family={EVAL_PER_FAMILY}",
                                       "--baseline=none"]}
           for r in runs if r["name"].startswith("tune_")]
  evals[0]["args"][-1] = "--baseline=no_tools"  # the no-tools floor, once
  # Tasks of the training split (new episodes of the families and templates tuned on):
  # easier, so they separate the runs where held-out success is near the floor.
  evals += [{"run": e["run"], "name": "train", "args": [
      "--split=train", f"--num_per_family={EVAL_PER_FAMILY}", "--baseline=none"]} for e in evals]
  return {"prepare": prepare, "runs": runs, "evals": evals,
          "columns": ["loss", "loss_stderr", "accuracy", "bits_per_byte", "mlm_accuracy", "nsp_accuracy"]}
