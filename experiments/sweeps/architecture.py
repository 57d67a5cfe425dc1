"""Architecture ablation: encoder-decoder vs decoder-only at matched parameters and FLOPs.

One task for all: continue a document of the synthetic corpus (8 topics) from its first
half (data.prefix_fraction 0.5). Loss and bits per byte are over the second half only.

  encdec_2x2          encoder-decoder, 2 + 2 layers (objective seq2seq: the first half is
                      the encoder input, the second half the decoder target)
  dec_4_same_params   decoder-only prefix-LM, 4 layers, MLP 596 so the parameter count
                      matches the encoder-decoder's (whose cross-attention adds 2 x 4d^2)
  dec_2_same_flops    decoder-only prefix-LM, 2 layers: the encoder-decoder's FLOPs per
                      token (each token passes through one stack of 2 layers there)

Everything else is shared (prefixlm_tiny: d_model 128, 4 heads, RoPE, RMSNorm, SwiGLU,
batch 32 x 128, 600 steps, lr 3e-3). The table's FLOPs column is what each run logged.

Command:
  python -m experiments.ablation --ablation=experiments/sweeps/architecture.py --root=runs/architecture
Cost: measured ~NN minutes on 2 CPU cores (see experiments/REPRODUCE.md).
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
          "data.target_seq_len": 128}},
      {"name": "dec_4_same_params", "config": CONFIG, "overrides": {
          **common, "model.num_layers": 4, "model.mlp_dim": 596}},
      {"name": "dec_2_same_flops", "config": CONFIG, "overrides": dict(common)},
  ]
  return {"runs": runs, "columns": ["loss", "accuracy", "bits_per_byte"]}
