"""Quickstart stage 2: tune the pretrained decoder into an agent on demonstrations.

Loss on assistant turns only (lm/chat.py's mask), over the demonstrations JSONL
written by `python -m agent.demos`, starting from the pretrain run's params and
tokenizer.

Command (the quickstart fills the paths):
  python -m experiments.train --config=experiments/configs/quickstart_sft.py \
      --workdir=runs/quickstart/sft --config.data.instructions_glob=runs/quickstart/data/demos.jsonl \
      --config.data.tokenizer_path=runs/quickstart/pretrain/tokenizer.model \
      --config.train.init_from=runs/quickstart/pretrain
Cost: about 3-4 minutes on 2 CPU cores.
Expected: held-out agent success well above the no-tools baseline (agent.evaluate).
"""
from experiments.configs import quickstart_pretrain


def get_config():
  c = quickstart_pretrain.get_config()
  c.objective = "sft"
  c.data.dataset = "instructions"
  c.train.num_steps = 400
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 20
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  return c
