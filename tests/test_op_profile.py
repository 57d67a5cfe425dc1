"""lm/op_profile.py: the wall-time split by what ran, on hand-made spans."""
from lm.op_profile import WALL_KINDS, concurrency, format_breakdown


def test_concurrency_splits_wall_time_by_what_ran():
  spans = [  # (start, end, is_matmul)
      (0, 10, True),   # matmul alone 0-4, beside another matmul 4-10
      (4, 12, True),   # ... alone again 10-12
      (12, 15, False),  # an other op alone 12-14, side by side with another 14-15
      (14, 16, False),  # alone 15-16
      (20, 30, True),  # nothing 16-20; a matmul beside an other op 22-25, alone otherwise
      (22, 25, False),
  ]
  out = concurrency(spans)
  assert list(out) == list(WALL_KINDS)
  assert out == {"matmuls side by side": 6, "a matmul beside other ops": 3, "a matmul alone": 13,
                 "other ops side by side": 1, "an other op alone": 3, "nothing": 4}
  assert sum(out.values()) == 30  # first start to last end


def test_concurrency_of_nothing_and_the_printed_line():
  assert concurrency([]) == dict.fromkeys(WALL_KINDS, 0)
  line = format_breakdown({k: 1.0 for k in WALL_KINDS})
  assert line.startswith("traced wall time per step by what ran:") and "nothing 1.0 ms (17%)" in line
