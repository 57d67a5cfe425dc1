"""A sweep file -> named runs, run one after another here or handed to a launcher.

  python -m experiments.sweep --sweep=experiments/sweeps/example.py --root=runs/example [--dry_run]
  python -m experiments.sweep --sweep=... --root=/shared/runs --launcher=slurm \
      --launch_flags="--nodes=1 --gpus_per_node=8 --partition=gpu"

A sweep file defines `get_sweep()` returning a dict (or a `Sweep`):

  config       base experiment config file (experiments/configs/*.py); "config" may also be
               a grid or zip field, to sweep over config files (e.g. model families)
  fixed        {dotted field: value} set on every run
  grid         {dotted field: [values]}: every combination (first field varies slowest)
  zip          {dotted field: [values]} or a list of such groups: each group's lists have
               one length and advance together; groups are crossed with the grid
  seeds        [ints] for `seed_field` (default "seed"), crossed with everything, innermost
  name_fields  fields that name a run (default: every grid, zip and seed field)

A run is named from its name fields' values, e.g. model.num_layers=4, seed=1 ->
`num_layers4_seed1` (the shortest unique dotted suffix, dots as '_'; a config file by its
stem: `t5_tiny_seed1`); names that still collide get `__2`, `__3`, ... in expansion order.
Each run's WORKDIR is ROOT/<name>.
Finished runs (a metrics.jsonl record at train.num_steps and that checkpoint) are skipped;
starting the same command again resumes the others. Field names are checked against
the config before anything runs, with close matches suggested.
"""
from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from typing import Any

from lm.config import flatten, suggest_field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_MODULE = "experiments.train"
CONFIG_AXIS = "config"  # as a grid/zip field: which experiment config file a run starts from


class SweepError(ValueError):
  """A problem in a sweep file; the message names the field or value."""


@dataclasses.dataclass
class Sweep:
  config: str
  fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
  grid: dict[str, list] = dataclasses.field(default_factory=dict)
  zip: list[dict[str, list]] = dataclasses.field(default_factory=list)
  seeds: list[int] | None = None
  seed_field: str = "seed"
  name_fields: list[str] | None = None

  @classmethod
  def from_spec(cls, spec: Any) -> "Sweep":
    if isinstance(spec, Sweep):
      return spec
    if not isinstance(spec, dict):
      raise SweepError(f"get_sweep() must return a dict or a Sweep, not {type(spec).__name__}")
    unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise SweepError(f"unknown sweep key(s) {sorted(unknown)}; expected config, fixed, grid, zip, seeds, "
                       "seed_field, name_fields")
    if "config" not in spec:
      raise SweepError("the sweep has no 'config' (the base experiment config file)")
    spec = dict(spec)
    z = spec.get("zip") or []
    spec["zip"] = [z] if isinstance(z, dict) else list(z)
    return cls(**spec)


@dataclasses.dataclass
class Run:
  name: str
  overrides: dict[str, Any]  # fixed, then axis values, in order
  config: dict  # the resolved config (as config.json will hold it)
  config_path: str = ""  # the experiment config file it starts from
  workdir: str = ""

  @property
  def num_steps(self) -> int:
    return int(self.config["train"]["num_steps"])


# ---------------------------------------------------------------- loading

def _load_module(path: str, what: str):
  for candidate in (path, os.path.join(REPO_ROOT, path)):
    if os.path.exists(candidate):
      name = f"_{what}_{abs(hash(candidate))}"  # any file name, not only *.py
      spec = importlib.util.spec_from_loader(name, importlib.machinery.SourceFileLoader(name, candidate))
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      return module, candidate
  raise SweepError(f"{what} file {path!r} not found (relative paths are tried from the current "
                   f"directory and from {REPO_ROOT})")


def load_sweep(path: str) -> Sweep:
  module, _ = _load_module(path, "sweep")
  if not hasattr(module, "get_sweep"):
    raise SweepError(f"sweep file {path} defines no get_sweep()")
  return Sweep.from_spec(module.get_sweep())


def load_config(path: str):
  module, _ = _load_module(path, "config")
  if not hasattr(module, "get_config"):
    raise SweepError(f"config file {path} defines no get_config()")
  return module.get_config()


# ---------------------------------------------------------------- names and values

def format_value(v: Any) -> str:
  """A value as it appears in a run name."""
  if isinstance(v, float):
    text = format(v, "g")
  elif isinstance(v, (list, tuple)):
    text = "x".join(format_value(x) for x in v)
  else:
    text = str(v)
  return re.sub(r"[^A-Za-z0-9._+-]", "-", text)


def flag_value(v: Any) -> str:
  """A value as ml_collections' --config.field= parses it."""
  if isinstance(v, float):
    return repr(v)
  if isinstance(v, (list, tuple)):
    return "(" + ", ".join(flag_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
  return str(v)


def short_names(fields: list[str]) -> dict[str, str]:
  """Shortest dotted suffix of each field not shared with another field, dots -> '_'."""
  out = {}
  for f in fields:
    parts = f.split(".")
    for k in range(1, len(parts) + 1):
      suffix = parts[-k:]
      if not any(o != f and o.split(".")[-k:] == suffix for o in fields):
        break
    out[f] = "_".join(suffix)
  return out


def _unique_names(names: list[str]) -> list[str]:
  seen, out = set(names), []
  counts: dict[str, int] = {}
  for n in names:
    counts[n] = counts.get(n, 0) + 1
    if counts[n] == 1:
      out.append(n)
      continue
    k = counts[n]
    while f"{n}__{k}" in seen:
      k += 1
    seen.add(f"{n}__{k}")
    out.append(f"{n}__{k}")
  return out


# ---------------------------------------------------------------- expansion

def _axes(s: Sweep) -> list[list[dict[str, Any]]]:
  """Each axis as its list of {field: value} points."""
  axes = []
  for field, values in s.grid.items():
    if not isinstance(values, (list, tuple)) or not values:
      raise SweepError(f"grid field {field!r} needs a non-empty list of values, got {values!r}")
    axes.append([{field: v} for v in values])
  for group in s.zip:
    lengths = {f: len(v) if isinstance(v, (list, tuple)) else None for f, v in group.items()}
    if any(n is None for n in lengths.values()) or len(set(lengths.values())) != 1 or 0 in lengths.values():
      raise SweepError(f"zip group fields need non-empty lists of one length, got lengths {lengths}")
    n = next(iter(lengths.values()))
    axes.append([{f: group[f][i] for f in group} for i in range(n)])
  if s.seeds is not None:
    if not s.seeds:
      raise SweepError("seeds is an empty list; leave it out to use the config's seed")
    axes.append([{s.seed_field: seed} for seed in s.seeds])
  return axes


def _axis_fields(s: Sweep) -> list[str]:
  fields = list(s.grid) + [f for g in s.zip for f in g]
  return fields + ([s.seed_field] if s.seeds is not None else [])


def _set(cfg, dotted: str, value: Any, where: str) -> None:
  node = cfg
  *parents, leaf = dotted.split(".")
  for p in parents:
    node = node[p]
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise SweepError(f"{where} value {dotted}={value!r} does not fit the field "
                     f"(type {type(node[leaf]).__name__}): {e}") from None


def _check_fields(s: Sweep, cfg, path: str) -> None:
  known = set(flatten(cfg.to_dict()))
  prefixes = {k.rsplit(".", i)[0] for k in known for i in range(1, k.count(".") + 1)}
  sources = [("fixed", list(s.fixed)), ("grid", list(s.grid)), ("zip", [f for g in s.zip for f in g]),
             ("seed_field", [s.seed_field] if s.seeds is not None else []),
             ("name_fields", list(s.name_fields or []))]
  if CONFIG_AXIS in s.fixed:
    raise SweepError("'config' in fixed: give the base config file as the sweep's 'config' instead")
  for where, fields in sources:
    for f in fields:
      if f == CONFIG_AXIS:
        continue
      if f in prefixes:
        raise SweepError(f"{where} field {f!r} is a group of fields, not one field; name a leaf like "
                         f"{sorted(k for k in known if k.startswith(f + '.'))[0]!r}")
      if f not in known:
        raise SweepError(f"unknown config field {f!r} in {where} of the sweep (config {path})."
                         f"{suggest_field(cfg, f)}")
  axis = _axis_fields(s)
  dup = sorted({f for f in axis if axis.count(f) > 1} | (set(axis) & set(s.fixed)))
  if dup:
    raise SweepError(f"field(s) {dup} appear in more than one of fixed / grid / zip / seeds")
  missing = [f for f in (s.name_fields or []) if f not in axis]
  if missing:
    raise SweepError(f"name_fields {missing} are not swept (grid, zip or seeds)")


def _name_part(short: str, field: str, value: Any) -> str:
  if field == CONFIG_AXIS:  # a config file is named by its stem: t5_tiny
    return format_value(os.path.splitext(os.path.basename(str(value)))[0])
  return f"{short}{format_value(value)}"


def expand(s: Sweep, root: str = "") -> list[Run]:
  """Every run of the sweep, named, with its overrides and resolved config."""
  axes = _axes(s)
  paths = [s.config] + [p[CONFIG_AXIS] for axis in axes for p in axis if CONFIG_AXIS in p]
  bases = {}
  for path in dict.fromkeys(paths):  # every config file, checked once, in order
    bases[path] = load_config(path)
    _check_fields(s, bases[path], path)
  name_fields = list(s.name_fields) if s.name_fields is not None else _axis_fields(s)
  short = short_names(name_fields)
  runs, names, seen = [], [], {}
  for combo in itertools.product(*axes):
    values: dict[str, Any] = {}
    for point in combo:
      values.update(point)
    path = values.get(CONFIG_AXIS, s.config)
    overrides = {k: v for k, v in {**s.fixed, **values}.items() if k != CONFIG_AXIS}
    cfg = bases[path].copy_and_resolve_references()
    for f, v in overrides.items():
      _set(cfg, f, v, "fixed" if f in s.fixed else "axis")
    key = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    if key in seen:
      raise SweepError(f"two points of the sweep give the same config: {seen[key]} and {values}")
    seen[key] = values
    names.append("_".join(_name_part(short[f], f, values[f]) for f in name_fields) or "run")
    runs.append(Run(name="", overrides=overrides, config=cfg.to_dict(), config_path=path))
  for run, name in zip(runs, _unique_names(names)):
    run.name = name
    run.workdir = os.path.join(root, name) if root else name
  return runs


# ---------------------------------------------------------------- status and commands

def run_status(workdir: str, num_steps: int) -> str:
  """'finished', 'partial' (something there: it resumes) or 'new'."""
  metrics = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics) and os.path.isdir(os.path.join(workdir, "checkpoints", str(num_steps))):
    with open(metrics) as f:
      for line in f:
        try:
          if json.loads(line).get("step") == num_steps:
            return "finished"
        except (json.JSONDecodeError, AttributeError):
          continue  # a torn last line from a killed run
  has_any = any(os.path.exists(os.path.join(workdir, p)) for p in ("config.json", "metrics.jsonl", "checkpoints"))
  return "partial" if has_any else "new"


def train_command(run: Run, config_path: str = "", python: str = "python", module: str = TRAIN_MODULE) -> list[str]:
  """The train command line; config_path defaults to the run's own config file."""
  config_path = config_path or run.config_path
  return ([*shlex.split(python), "-m", module, f"--config={config_path}", f"--workdir={run.workdir}"]
          + [f"--config.{f}={flag_value(v)}" for f, v in run.overrides.items()])


def _local_config_path(path: str) -> str:
  """Absolute, found from the current directory or REPO_ROOT (like load_config)."""
  return os.path.abspath(path if os.path.exists(path) else os.path.join(REPO_ROOT, path))


def _is_remote(path: str) -> bool:
  return "://" in path


# ---------------------------------------------------------------- running

def _launch_plan(launcher: str, launch_flags: str, run: Run, command: list[str], index: int, total: int):
  if REPO_ROOT not in sys.path:  # launch/ sits next to experiments/; an older editable install lacks it
    sys.path.append(REPO_ROOT)
  from launch.cli import build_parser, make_plan
  args = build_parser().parse_args([f"--backend={launcher}", *shlex.split(launch_flags)])
  if not args.job_name:
    args.job_name = run.name
  if launcher == "tpu":  # one TPU VM for the whole sweep: set up once, delete after the last run
    steps = args.tpu_steps.split(",")
    keep = {"run", "fetch"} | ({"create", "sync", "install"} if index == 0 else set()) | (
        {"delete"} if index == total - 1 else set())
    args.tpu_steps = ",".join(s for s in steps if s in keep)
  if launcher in ("local", "slurm") and args.log_dir == "launch_logs" and not _is_remote(run.workdir):
    args.log_dir = os.path.join(run.workdir, "launch")
  return make_plan(args, command)


def _run_local(command: list[str], log_path: str) -> int:
  """One run as a subprocess; output to the terminal and appended to its log."""
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, "ab") as log:
    p = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
      for line in iter(p.stdout.readline, b""):
        log.write(line)
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
      return p.wait()
    except KeyboardInterrupt:
      p.terminate()
      p.wait()
      raise


def run_sweep(s: Sweep, root: str, launcher: str = "local", launch_flags: str = "", dry_run: bool = False,
              only: str = "", python: str = "", stop_on_failure: bool = False, module: str = TRAIN_MODULE) -> int:
  """Run (or print) every unfinished run; returns the number that failed."""
  remote = launcher != "local"
  # Runs on a TPU VM (or in gs://...) write where this machine cannot look; SLURM nodes share
  # this filesystem. Unseen runs are started anyway: a finished run started again does nothing.
  unseen = launcher == "tpu" or _is_remote(root)
  if not remote and not unseen:
    root = os.path.abspath(root)
  runs = [r for r in expand(s, root) if not only or re.search(only, r.name)]
  python = python or ("python" if remote else shlex.quote(sys.executable))

  def config_arg(r: Run) -> str:
    return r.config_path if remote else _local_config_path(r.config_path)

  todo = []
  for r in runs:
    status = "unknown" if unseen else run_status(r.workdir, r.num_steps)
    todo.append((r, status))
  print(f"sweep {root}: {len(runs)} run{'s' if len(runs) != 1 else ''}, "
        f"{sum(st == 'finished' for _, st in todo)} finished")
  for r, st in todo:
    print(f"  [{st}] {r.name}")
  if not dry_run and not unseen:
    _write_manifest(s, root, runs, python, module, config_arg)
  pending = [(r, st) for r, st in todo if st != "finished"]
  failed = []
  for i, (r, st) in enumerate(pending):
    command = train_command(r, config_arg(r), python, module)
    print(f"\n==> [{i + 1}/{len(pending)}] {r.name} ({'resume' if st == 'partial' else st})", flush=True)
    if launcher == "local" and not launch_flags.strip():
      if dry_run:
        print(f"(cd {shlex.quote(REPO_ROOT)} && {shlex.join(command)})")
        continue
      code = _run_local(command, os.path.join(r.workdir, "sweep.log"))
    else:
      plan = _launch_plan(launcher, launch_flags, r, command, i, len(pending))
      if dry_run:
        sys.stdout.write(plan.text)
        continue
      code = plan.run()
    if code:
      failed.append(r.name)
      print(f"sweep: {r.name} failed with status {code}", file=sys.stderr)
      if stop_on_failure:
        break
  if failed:
    print(f"\nsweep: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
  return len(failed)


def _write_manifest(s: Sweep, root: str, runs: list[Run], python: str, module: str, config_arg) -> None:
  os.makedirs(root, exist_ok=True)
  doc = {"sweep": dataclasses.asdict(s),
         "runs": [{"name": r.name, "workdir": r.workdir, "overrides": r.overrides,
                   "command": shlex.join(train_command(r, config_arg(r), python, module))} for r in runs]}
  tmp = os.path.join(root, "sweep.json.tmp")
  with open(tmp, "w") as f:
    json.dump(doc, f, indent=2, default=str)
  os.replace(tmp, os.path.join(root, "sweep.json"))


def main(argv=None) -> int:
  import argparse
  p = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__.split("\n")[0])
  p.add_argument("--sweep", required=True, help="sweep file defining get_sweep()")
  p.add_argument("--root", required=True, help="directory holding one WORKDIR per run")
  p.add_argument("--launcher", choices=("local", "tpu", "slurm"), default="local")
  p.add_argument("--launch_flags", default="",
                 help="flags for python -m launch (e.g. '--nodes=2'); with --launcher=local, "
                      "'--num_processes=2 --devices_per_process=4' runs each run multi-process")
  p.add_argument("--dry_run", action="store_true", help="print the runs and their commands, run nothing")
  p.add_argument("--only", default="", help="regex: only runs whose name matches")
  p.add_argument("--python", default="", help="python executable in the commands (default: this one "
                 "locally, 'python' for tpu/slurm)")
  p.add_argument("--stop_on_failure", action="store_true")
  p.add_argument("--train_module", default=TRAIN_MODULE, help="module each run starts with -m")
  args = p.parse_args(argv)
  try:
    failed = run_sweep(load_sweep(args.sweep), args.root, args.launcher, args.launch_flags, args.dry_run,
                       args.only, args.python, args.stop_on_failure, args.train_module)
  except SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
