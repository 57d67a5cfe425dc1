"""A small tool-using agent: tools, episode format and loop, task suites, scoring.

Pure Python (no jax). Modules, one concept each:
  tools      registry of schema-checked tool functions (calc, convert, lookup, ...)
  format     the text of turns and observations; strict action parser
  episode    the episode loop, its limits and the Policy protocol
  suite      the Task record, custom JSONL suites, split-overlap checks
  tasks      built-in task generators (families, splits, difficulty knobs)
  outcome    success checks (answer value, final ledger, clarify/refuse)
  baselines  oracle, no-tools wrapper and scripted test policies
  demos      gold trajectories as SFT data (`python -m agent.demos`)
  scoring    metrics, Wilson intervals, pass@k / pass^k, report files
The LM policy (`agent/policy.py`) plugs into `episode.Policy`.
"""
