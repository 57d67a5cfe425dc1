"""Keep training (or tune) a Hugging Face checkpoint imported with experiments.convert.

  python -m experiments.convert --from_hf=hf/gpt2 --to=runs/gpt2
  python -m experiments.train --config=experiments/configs/from_hf.py:runs/gpt2 \
      --workdir=runs/gpt2_tuned --config.data.dataset=text --config.data.text_glob='my/*.txt'

The model and objective are the import's (its config.json), train.init_from points at it
and the data is tokenized with its own tokenizer (WORKDIR/tokenizer/). Expected: the first
eval loss is the imported model's loss on that data (the first step's learning rate is 0).
"""
import json
import os

from lm.config import base_config


def get_config(workdir: str = ""):
  if not workdir:
    raise ValueError("give the imported WORKDIR: --config=experiments/configs/from_hf.py:WORKDIR")
  with open(os.path.join(workdir, "config.json")) as f:
    imported = json.load(f)
  c = base_config()
  c.model.update(imported["model"])
  c.objective = imported["objective"]
  c.data.seq_len = imported["data"]["seq_len"]
  c.train.init_from = os.path.abspath(workdir)
  return c
