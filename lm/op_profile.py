"""Where a compiled step spends its time: per-op totals from a jax.profiler trace.

XLA:CPU records one trace event per executed op (thunk) when the backend runs
with `--xla_cpu_enable_xprof_traceme=true`; on GPU the device planes carry the
kernels. `op_table` sums those events by op name, joins them with the compiled
HLO for the source op (`op_name` metadata: which layer and einsum it came from)
and, for matmuls, the FLOPs, so a row says e.g. "backward of mlp/wi, 4096x1024
@ 1024x256, 9.3 ms, 231 GFLOP/s". `experiments/benchmark.py --op_profile=N`
prints the table. `wall_breakdown` splits the traced wall time by what ran at each
moment (two matmuls side by side, a matmul alone, other ops alone, nothing), which
tells serial element-wise links and idle cores from slow GEMMs.

Some XLA:CPU ops are asynchronous: an Eigen matmul (e.g. a weight gradient that
contracts the leading dim of both operands, which YNNPACK does not take) records a 0.05 ms
launch event, runs on the thread pool while later ops start, and marks its
completion with an "end: NAME" event. Such an op's time is launch to completion
(`async_op`): wall time that overlaps the ops running beside it, which in turn
run slower for sharing the cores.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import math
import os
import re

# Trace events that are bookkeeping, not ops.
_SKIP_PREFIXES = ("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener", "$")
_END = "end: "  # completion marker of an asynchronous op


@dataclasses.dataclass
class OpRow:
  name: str  # the HLO instruction (fusion) name
  ms_per_step: float
  calls_per_step: float
  source: str  # op_name metadata, shortened: "FWD/decoder/layers_0/.../mlp/wi/..." or "BWD/..."
  gflop: float  # matmul FLOPs per step in this op (0 for non-matmuls)
  async_op: bool = False  # launched asynchronously: time is launch -> completion, overlapping other ops

  @property
  def gflops_per_s(self) -> float:
    return self.gflop / (self.ms_per_step / 1e3) if self.ms_per_step and self.gflop else 0.0


def _instructions(hlo_text: str) -> tuple[dict[str, str], dict[str, str]]:
  """(instruction name -> its text, computation name -> its body) of an HLO module dump."""
  comps = {m.group(1): m.group(2) for m in
           re.finditer(r"^(?:ENTRY )?%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.S | re.M)}
  inst = {}
  for body in comps.values():
    for line in body.splitlines():
      m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (.*)", line)
      if m:
        inst.setdefault(m.group(1), m.group(2))
  return inst, comps


def _dims(shape_text: str) -> list[int]:
  m = re.match(r"\w+\[([\d,]*)\]", shape_text)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def _dot_gflop(text: str, inst: dict[str, str]) -> float:
  """FLOPs of a dot instruction: 2 * output elements * contracted size."""
  m = re.match(r"(\S+) dot\(%([\w.\-]+), ", text)
  if not m:
    return 0.0
  out = _dims(m.group(1))
  lhs = _dims(inst.get(m.group(2), ""))
  contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", text)
  if not lhs or not contracting:
    return 0.0
  k = math.prod(lhs[int(i)] for i in contracting.group(1).split(",") if i)
  return 2.0 * math.prod(out) * k / 1e9


def _describe(name: str, inst: dict[str, str], comps: dict[str, str]) -> tuple[str, float]:
  """(source op name, matmul GFLOP) of an executed op, looking inside its fusion."""
  text = inst.get(name, "")
  lines = [text]
  called = re.search(r"calls=%([\w.\-]+)", text)
  if called and called.group(1) in comps:
    lines += [re.sub(r"^\s*(?:ROOT )?%[\w.\-]+ = ", "", l) for l in comps[called.group(1)].splitlines()]
  gflop = sum(_dot_gflop(l, inst) for l in lines if " dot(" in l)
  dot_line = next((l for l in lines if " dot(" in l), text)
  op = re.search(r'op_name="([^"]*)"', dot_line) or re.search(r'op_name="([^"]*)"', text)
  source = op.group(1) if op else ""
  source = re.sub(r"^jit\([^)]*\)/", "", source)
  source = re.sub(r"^transpose\(jvp\(([^)]*)\)\)/", "BWD/", source)
  source = re.sub(r"^jvp\(([^)]*)\)/", "FWD/", source)
  source = source.replace("while/body/closed_call/", "")  # scanned layers
  source = re.sub(r"(layers/)+layers\._sublayer/", "layers/", source)
  source = re.sub(r"(layers_\d+)/layers_\d+\._sublayer/", r"\1/", source)
  return source, gflop


def _trace_events(trace_dir: str) -> tuple[dict, dict]:
  """(op name -> [(start ns, duration ns)], op name -> [completion ns]) of the newest trace."""
  import jax

  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not files:
    raise FileNotFoundError(f"no *.xplane.pb trace under {trace_dir}")
  data = jax.profiler.ProfileData.from_file(max(files, key=os.path.getmtime))
  starts, ends = collections.defaultdict(list), collections.defaultdict(list)
  for plane in data.planes:
    device_plane = plane.name.startswith("/device:")
    for line in plane.lines:
      # XLA:CPU runs ops on its Eigen pool and, inline, on the client thread that launched the step
      if not (device_plane or line.name.startswith(("tf_XLAEigen", "tf_XLAPjRtCpuClient"))):
        continue
      for ev in line.events:
        if ev.name.startswith(_END):
          ends[ev.name[len(_END):]].append(ev.start_ns)
        elif not ev.name.startswith(_SKIP_PREFIXES):
          starts[ev.name].append((ev.start_ns, ev.duration_ns))
  return starts, ends


def _intervals(name: str, evs: list, done: list, inst: dict) -> tuple[bool, list[tuple[int, int]]]:
  """(asynchronous?, [(start ns, end ns)]) of one op's executions."""
  evs, done = sorted(evs), sorted(done)
  # A plain (unfused) dot runs on Eigen asynchronously: time it launch -> completion.
  async_op = " dot(" in inst.get(name, "") and len(done) == len(evs)
  if async_op:
    return True, [(s, s + max(e - s, d)) for (s, d), e in zip(evs, done)]
  return False, [(s, s + d) for s, d in evs]


def op_table(trace_dir: str, hlo_text: str, steps: int) -> list[OpRow]:
  """Per-op time of `steps` traced steps, slowest first."""
  starts, ends = _trace_events(trace_dir)
  inst, comps = _instructions(hlo_text)
  rows = []
  for name, evs in starts.items():
    source, gflop = _describe(name, inst, comps)
    async_op, spans = _intervals(name, evs, ends.get(name, []), inst)
    ns = sum(e - s for s, e in spans)
    calls = len(evs) / steps
    rows.append(OpRow(name, ns / 1e6 / steps, calls, source, gflop * calls, async_op))
  return sorted(rows, key=lambda r: -r.ms_per_step)


# What was running, by kind: the keys of `wall_breakdown`.
WALL_KINDS = ("matmuls side by side", "a matmul beside other ops", "a matmul alone",
              "other ops side by side", "an other op alone", "nothing")


def concurrency(spans: list[tuple[int, int, bool]]) -> dict[str, int]:
  """Wall ns from the first start to the last end, split by what ran: spans are
  (start, end, is_matmul). "alone" means the only op running (it may still use every
  core: XLA:CPU parallelises GEMMs and loop fusions inside one op)."""
  points = sorted([(s, 1, m) for s, _, m in spans] + [(e, -1, m) for _, e, m in spans])
  out = dict.fromkeys(WALL_KINDS, 0)
  running = {True: 0, False: 0}
  last = points[0][0] if points else 0
  for t, delta, is_matmul in points:
    mm, other = running[True], running[False]
    kind = ("nothing" if mm + other == 0 else
            "matmuls side by side" if mm >= 2 else
            "a matmul beside other ops" if mm == 1 and other else
            "a matmul alone" if mm == 1 else
            "other ops side by side" if other >= 2 else "an other op alone")
    out[kind] += t - last
    running[is_matmul] += delta
    last = t
  return out


def wall_breakdown(trace_dir: str, hlo_text: str, steps: int) -> dict[str, float]:
  """ms per step of the traced wall time, by what was running (WALL_KINDS)."""
  starts, ends = _trace_events(trace_dir)
  inst, comps = _instructions(hlo_text)
  spans = []
  for name, evs in starts.items():
    is_matmul = _describe(name, inst, comps)[1] > 0
    spans += [(s, e, is_matmul) for s, e in _intervals(name, evs, ends.get(name, []), inst)[1]]
  return {k: v / 1e6 / steps for k, v in concurrency(spans).items()}


def format_breakdown(wall: dict[str, float]) -> str:
  total = sum(wall.values()) or 1.0
  parts = ", ".join(f"{k} {v:.1f} ms ({100 * v / total:.0f}%)" for k, v in wall.items())
  return f"traced wall time per step by what ran: {parts}"


def summarize(rows: list[OpRow], top: int) -> str:
  """Matmul vs other time, then the `top` slowest ops."""
  dot_ms = sum(r.ms_per_step for r in rows if r.gflop)
  dot_gflop = sum(r.gflop for r in rows)
  other_ms = sum(r.ms_per_step for r in rows if not r.gflop)
  rate = dot_gflop / (dot_ms / 1e3) if dot_ms else 0.0
  out = [f"ops per step: matmuls {dot_ms:.1f} ms ({dot_gflop:.1f} GFLOP, {rate:.0f} GFLOP/s), "
         f"other ops {other_ms:.1f} ms",
         f"{'ms/step':>8}  {'GFLOP/s':>7}  {'op':<28}  source"]
  for r in rows[:top]:
    rate = f"{r.gflops_per_s:7.0f}" if r.gflop else " " * 7
    name = (r.name[:26] + " *") if r.async_op else r.name[:28]
    out.append(f"{r.ms_per_step:8.2f}  {rate}  {name:<28}  {r.source[:110]}")
  if any(r.async_op for r in rows[:top]):
    out.append("* asynchronous (Eigen matmul): launch to completion, overlapping the ops that ran "
               "beside it (which share the cores and look slower for it)")
  return "\n".join(out)
