"""Architecture ablation: encoder-decoder vs decoder-only at matched parameters and FLOPs.

One task for all: continue a document of the synthetic corpus (8 topics) from its first
half (data.prefix_fraction 0.5). Loss and bits per byte are over the second half only.

  encdec_2x2          encoder-decoder, 2 + 2 layers (objective seq2seq: the first half is
                      the encoder input, the second half the decoder target)
  dec_4_same_params   decoder-only prefix-LM, 4 layers, MLP 596 so the parameter count
                      matches the encoder-decoder's (whose cross-attention adds 2 x 4d^2)
  dec_2_same_flops    decoder-only prefix-LM, 2 layers: the encoder-decoder's FLOPs per
                      token (each token passes through one stack of 2 layers there)
  encdec_2x2_same_rows  the encoder-decoder at the decoders' 32 rows per step: 2.3x the
                      text and ~2x the FLOPs of dec_2 (what "same batch size" would give)

Everything else is shared (prefixlm_tiny: d_model 128, 4 heads, RoPE, RMSNorm, SwiGLU,
600 steps, lr 3e-3), and every run sees about the same text per step. Rows are packed
with whole examples: a decoder row of 128 tokens holds 92.8 text tokens on average (48.3
of them targets), an encoder-decoder row pair (128 + 128) holds 108.6 input and 109.0
target tokens, so the encoder-decoder takes 14 rows per step to the decoders' 32 (1,526
vs 1,544 target tokens per step). The table's tokens column counts padded positions of
both stacks; its FLOPs column is what each run logged.

Command:
  python -m experiments.ablation --ablation=experiments/sweeps/architecture.py --root=runs/architecture
Cost: measured 53 minutes on 2 shared CPU cores (about half alone).
Result: experiments/REPRODUCE.md ("Architecture").
"""
CONFIG = "experiments/configs/prefixlm_tiny.py"
STEPS = 600


def get_ablation():
  common = {"data.prefix_fraction": 0.5, "model.position": "rope", "train.num_steps": STEPS,
            "train.eval_every": 200, "train.checkpoint_every": 200, "train.eval_batches": 16}
  runs = [
      {"name": "encdec_2x2", "config": CONFIG, "overrides": {
          **common, "objective": "seq2seq", "model.family": "encoder_decoder",
          "data.target_seq_len": 128, "train.batch_size": 14}},
      {"name": "dec_4_same_params", "config": CONFIG, "overrides": {
          **common, "model.num_layers": 4, "model.mlp_dim": 596}},
      {"name": "dec_2_same_flops", "config": CONFIG, "overrides": dict(common)},
      # Same rows per step as the decoders: 2.3x their text and ~2x dec_2's FLOPs.
      {"name": "encdec_2x2_same_rows", "config": CONFIG, "overrides": {
          **common, "objective": "seq2seq", "model.family": "encoder_decoder",
          "data.target_seq_len": 128}},
  ]
  return {"runs": runs, "columns": ["loss", "loss_stderr", "accuracy", "bits_per_byte"]}
