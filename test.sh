#!/usr/bin/env bash
# Every test, from nothing: set up .venv, then check in order that
#  1. nbdev_export leaves chatgpt_course/ unchanged (notebooks and library in sync),
#  2. pyflakes finds nothing in chatgpt_course/ (unused imports, undefined names),
#  3. nbdev_clean leaves nbs/ unchanged,
#  4. nbdev_test passes (CPU; cells flagged slow or cuda are skipped),
#  5. pytest tests/ passes, with the 15 slowest tests listed (printed last).
# Exits non-zero on the first failure.
source "$(dirname "$0")/scripts/setup.sh"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

echo "== 1/5 nbdev_export leaves chatgpt_course/ unchanged"
cp -r chatgpt_course "$tmp/lib"
nbdev_export
if ! diff -r -q -x __pycache__ "$tmp/lib" chatgpt_course; then
  echo "FAIL: nbdev_export changed chatgpt_course/ (above). The notebooks are the source: export and commit both." >&2
  exit 1
fi

echo "== 2/5 pyflakes chatgpt_course/"
if ! python -m pyflakes chatgpt_course/; then
  echo "FAIL: pyflakes found the problems above in the library. Fix them in the notebooks, then export." >&2
  exit 1
fi

echo "== 3/5 nbdev_clean leaves nbs/ unchanged"
cp -r nbs "$tmp/nbs"
nbdev_clean
if ! diff -r -q -x .ipynb_checkpoints "$tmp/nbs" nbs; then
  echo "FAIL: nbdev_clean changed the notebooks above (now cleaned in place): commit the cleaned versions." >&2
  exit 1
fi

echo "== 4/5 nbdev_test (CPU; slow and cuda cells skipped)"
# two notebooks at a time on two cores: one thread each, or the two runs fight over the cores
OMP_NUM_THREADS=1 nbdev_test --n_workers 2 --timing

echo "== 5/5 pytest tests/"
python -m pytest tests/ -q --durations=15
