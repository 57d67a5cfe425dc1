"""Hugging Face BERT / GPT-2 / T5 checkpoints <-> WORKDIRs (lm/interop/).

  python -m experiments.convert --from_hf=hf/gpt2 --to=runs/gpt2
  python -m experiments.convert --from_workdir=runs/gpt2 [--step=N] --to_hf=hf/gpt2_out

An imported WORKDIR works like a training run's: experiments.generate, agent.evaluate
and experiments.train (train.init_from) read it. Needs `pip install -e '.[hf]'` (no torch).
The destination must not exist or be empty; any problem is reported before it is written.
"""
from __future__ import annotations

import argparse
import json
import sys


def parse(argv):
  p = argparse.ArgumentParser(prog="python -m experiments.convert", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--from_hf", help="HF directory: config.json + model.safetensors (+ tokenizer files)")
  p.add_argument("--to", help="new WORKDIR to write (with --from_hf)")
  p.add_argument("--from_workdir", help="WORKDIR of a run or of an import")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
  p.add_argument("--to_hf", help="new HF directory to write (with --from_workdir)")
  args = p.parse_args(argv)
  importing = bool(args.from_hf or args.to)
  exporting = bool(args.from_workdir or args.to_hf)
  if importing == exporting or (importing and not (args.from_hf and args.to)) or (
      exporting and not (args.from_workdir and args.to_hf)):
    p.error("give either --from_hf and --to, or --from_workdir and --to_hf")
  if args.step is not None and not exporting:
    p.error("--step applies to --from_workdir only")
  return args


def main(argv=None) -> dict:
  args = parse(sys.argv[1:] if argv is None else argv)
  from lm import interop
  try:
    if args.from_hf:
      summary = interop.import_hf(args.from_hf, args.to)
    else:
      summary = interop.export_hf(args.from_workdir, args.to_hf, args.step)
  except interop.InteropError as e:
    raise SystemExit(f"error: {e}") from e
  print(json.dumps(summary, sort_keys=True))
  return summary


if __name__ == "__main__":
  main()
