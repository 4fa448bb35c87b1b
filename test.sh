#!/usr/bin/env bash
# Every test, from nothing: set up .venv, then check in order that
#  1. nbdev_export leaves chatgpt_course/ unchanged (notebooks and library in sync),
#  2. pyflakes finds nothing in chatgpt_course/ (unused imports, undefined names),
#  3. nbdev_clean leaves nbs/ unchanged,
#  4. nbdev_test passes (CPU; cells flagged slow or cuda are skipped),
#  5. every notebook runs top to bottom in a plain Jupyter kernel, as JupyterLab's "Run All" does (CPU, test
#     size; nbdev's flags unknown there, so cuda and slow cells must skip themselves: see 00_core),
#  6. pytest tests/ passes (two workers, a test file each, one thread each), with the 15 slowest tests listed (printed last).
# Exits non-zero on the first failure.
source "$(dirname "$0")/scripts/setup.sh"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

echo "== 1/6 nbdev_export leaves chatgpt_course/ unchanged"
cp -r chatgpt_course "$tmp/lib"
nbdev_export
if ! diff -r -q -x __pycache__ "$tmp/lib" chatgpt_course; then
  echo "FAIL: nbdev_export changed chatgpt_course/ (above). The notebooks are the source: export and commit both." >&2
  exit 1
fi

echo "== 2/6 pyflakes chatgpt_course/"
if ! python -m pyflakes chatgpt_course/; then
  echo "FAIL: pyflakes found the problems above in the library. Fix them in the notebooks, then export." >&2
  exit 1
fi

echo "== 3/6 nbdev_clean leaves nbs/ unchanged"
cp -r nbs "$tmp/nbs"
nbdev_clean
if ! diff -r -q -x .ipynb_checkpoints "$tmp/nbs" nbs; then
  echo "FAIL: nbdev_clean changed the notebooks above (now cleaned in place): commit the cleaned versions." >&2
  exit 1
fi

echo "== 4/6 nbdev_test (CPU; slow and cuda cells skipped)"
# two notebooks at a time on two cores: one thread each, or the two runs fight over the cores
OMP_NUM_THREADS=1 nbdev_test --n_workers 2 --timing

echo "== 5/6 Run All in a plain Jupyter kernel (CPU, test size; cuda and slow cells skip themselves)"
# a reader's run, not nbdev's: every cell in order, flags left in the source, matplotlib's inline back end (no
# MPLBACKEND=Agg), no GPU (CUDA_VISIBLE_DEVICES empty), the notebook's folder as working directory; the executed
# copies go to $tmp, never to nbs/. Two at a time, one thread each, as in step 4.
mkdir -p "$tmp/run_all"
run_all() {  # NOTEBOOK: execute it in a fresh kernel, print its time; on failure the failing cell and its traceback
  local nb=$1 log="$tmp/run_all/$(basename "$1" .ipynb).log" t0=$(date +%s)
  # the kernel logs errors only (not its TCP-encryption warning) and prints tracebacks without colours
  local kernel="['--IPKernelApp.log_level=ERROR', '--InteractiveShell.colors=nocolor', '--InteractiveShell.xmode=Plain']"
  if jupyter nbconvert --execute --to notebook --output-dir "$tmp/run_all" --log-level=ERROR \
       --ExecutePreprocessor.timeout=1800 --ExecutePreprocessor.extra_arguments="$kernel" "$nb" 2>"$log"; then
    printf '%5d s  %s\n' $(( $(date +%s) - t0 )) "$nb"
  else
    printf 'FAIL: Run All stopped in %s after %d s:\n' "$nb" $(( $(date +%s) - t0 )) >&2
    if grep -q CellExecutionError "$log"; then sed -n '/CellExecutionError/,$p' "$log" >&2; else tail -n 30 "$log" >&2; fi
    return 1
  fi
}
export -f run_all; export tmp
if ! ls nbs/*.ipynb | env -u MPLBACKEND CUDA_VISIBLE_DEVICES= CHATGPT_COURSE_SMALL=1 OMP_NUM_THREADS=1 \
       xargs -P 2 -I{} bash -c 'run_all "$1"' _ {}; then
  echo "FAIL: Run All stopped in the notebooks above. A GPU-only cell needs #| cuda, and its notebook a hidden" \
       "notebook_setup() cell (00_core), to skip itself here." >&2
  exit 1
fi

# the chat page's browser test (tests/test_page.py) needs Chromium and its driver: install them where apt can, else it skips
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && $SUDO true 2>/dev/null; then
    echo "== installing chromium and chromium-driver for the page test"
    apt_install() { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }
    apt_install || { $SUDO apt-get update -qq >/dev/null 2>&1 && apt_install; } \
      || echo "note: could not install chromium; tests/test_page.py will skip"
  else
    echo "note: no chromium and no apt-get here; tests/test_page.py will skip (apt-get install chromium chromium-driver)"
  fi
fi

echo "== 6/6 pytest tests/ (two workers)"
# a file's tests stay on one worker, so its module fixtures (tiny models, checkpoints) are built once
OMP_NUM_THREADS=1 python -m pytest tests/ -q -n 2 --dist loadfile --durations=15
