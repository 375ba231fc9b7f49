#!/usr/bin/env python3
"""same_predictions.py A.csv B.csv EXACT: two `exitrt run --predictions` files
agree. EXACT=1 (the CPU backend on a batch-invariant BLAS, see src/cpu/cpu_ops.h):
byte for byte. EXACT=0: every row's exit and class agree except at most 1% of
rows (a score within rounding of its threshold may fall either way), and the
scores of rows that agree are within 1e-5."""
import sys

a_path, b_path, exact = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
a, b = open(a_path, "rb").read(), open(b_path, "rb").read()
if exact:
    sys.exit(0 if a == b else f"{a_path} and {b_path} differ")
a, b = a.decode().splitlines(), b.decode().splitlines()
assert a[0] == b[0] == "index,exit,class,score" and len(a) == len(b), "headers or lengths differ"
moved = 0
for x, y in zip(a[1:], b[1:]):
    x, y = x.split(","), y.split(",")
    assert x[0] == y[0], (x, y)
    if x[1:3] != y[1:3]:
        moved += 1
        continue
    sx, sy = float(x[3]), float(y[3])
    assert abs(sx - sy) <= 1e-5 * max(1.0, abs(sx)), (x, y)
assert moved * 100 <= len(a) - 1, f"{moved} of {len(a) - 1} rows differ in exit or class"
