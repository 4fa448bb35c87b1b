#!/usr/bin/env bash
# The GPU checks, in one run of at most 8 minutes on one H100 or H200 (setup aside), then one summary table:
#  a. nbdev_test --flags "slow cuda": the notebooks with their GPU and slow cells (the CPU suite skips them)
#  b. gpu-124m training throughput (benchmarks/train.py): GPT-2 small, bf16 autocast, torch.compile, fused
#     AdamW, 16 x 1024 tokens a step; tokens/s and MFU against the datasheet peak (989 TFLOP/s bf16 dense on
#     H100 SXM and H200, 756 on H100 PCIe)
#  c. batch-1 decoding at GPT-2 small's shape with the KV cache (benchmarks/model.py --shapes decode-124m)
#  d. the same decoding with CUDA graphs: engine.StaticDecoder, torch.compile(mode="reduce-overhead"), bf16 weights
#     (benchmarks/model.py --shapes decode-124m-graphs); it fails, rather than report a slower figure, if a step
#     cannot become a CUDA graph
# Each part has its own time limit and the next one runs even if it fails; the exit status is non-zero if any
# failed, and at once, with a message, where there is no CUDA GPU. Logs and figures go to runs/gpu/.
#
#   bash benchmarks/gpu.sh                        # sets up .venv first (scripts/setup.sh), as test.sh does
#   USE_PYTHON_IN_PATH=1 bash benchmarks/gpu.sh   # a machine without a network: the python3 in PATH as it is
#                                                 # (it needs torch with CUDA; nbdev for part a)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${USE_PYTHON_IN_PATH:-0}" = 1 ]; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg
  PY=python3
else
  source scripts/setup.sh || exit 1
  set +e  # setup.sh sets -e; here a failing part must not stop the others
  PY=python
fi
export PYTHONUNBUFFERED=1

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  why=$("$PY" -c 'import torch; print(f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no GPU")' 2>/dev/null \
        || echo "$PY cannot import torch")
  echo "error: benchmarks/gpu.sh needs a CUDA GPU: $why." >&2
  echo "       The CPU checks are ./test.sh; the CPU benchmarks are benchmarks/train.py and benchmarks/model.py." >&2
  exit 1
fi

out=runs/gpu; mkdir -p "$out"; rm -f "$out"/*.json "$out"/*.log
# the budget, as arithmetic: 250 s + 150 s + 30 s + 45 s = 475 s of parts, under 480 s with the GPU probe and the table
# (d: about 5 s to start, a compile of the decode step that the notebooks' run of 04b has usually left in inductor's
# cache, then two calls of 256 tokens)
NB_S=250; TRAIN_S=150; DECODE_S=30; GRAPHS_S=45
declare -A rc secs

part() {  # part NAME LIMIT_S COMMAND...: run with a time limit, log to runs/gpu/NAME.log, remember status and time
  local name=$1 limit=$2; shift 2
  echo "== $name (at most $limit s; log $out/$name.log)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  rc[$name]=${PIPESTATUS[0]}; secs[$name]=$((SECONDS - t0))
}

echo "== $("$PY" -c 'from chatgpt_course.core import machine_summary; print(machine_summary("cuda"))')"
if command -v nbdev_test >/dev/null; then
  part notebooks "$NB_S" nbdev_test --flags "slow cuda" --n_workers 4 --timing
else
  echo "== notebooks: not run, nbdev_test is not installed (pip install nbdev, or run without USE_PYTHON_IN_PATH)"
  rc[notebooks]=127; secs[notebooks]=0
fi
# 5 warm-up steps take torch.compile's first compilation; the 20 timed steps then cost about 2 s on an H100
part train "$TRAIN_S" "$PY" benchmarks/train.py --configs gpu-124m --device cuda --steps 20 --warmup 5 --json "$out/train.json"
part decode "$DECODE_S" "$PY" benchmarks/model.py --device cuda --dtype bf16 --shapes decode-124m --decode-tokens 256 --json "$out/decode.json"
part graphs "$GRAPHS_S" "$PY" benchmarks/model.py --device cuda --dtype bf16 --shapes decode-124m-graphs --decode-tokens 256 --json "$out/graphs.json"

echo "== summary"
RC_NOTEBOOKS=${rc[notebooks]} RC_TRAIN=${rc[train]} RC_DECODE=${rc[decode]} RC_GRAPHS=${rc[graphs]} \
S_NOTEBOOKS=${secs[notebooks]} S_TRAIN=${secs[train]} S_DECODE=${secs[decode]} S_GRAPHS=${secs[graphs]} OUT="$out" "$PY" - <<'EOF'
import json, os
from pathlib import Path
out = Path(os.environ["OUT"])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.is_file() else None
def status(key):
    rc = int(os.environ[f"RC_{key}"])
    return "ok" if rc == 0 else ("timed out" if rc in (124, 137) else ("not run" if rc == 127 else f"FAILED (rc {rc})"))
train, decode, graphs = load("train.json"), load("decode.json"), load("graphs.json")
if train and train["rows"]:
    r = train["rows"][0]
    mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
    tfig = f"{r['tokens_per_s']:,.0f} tokens/s, {r['ms_per_step']:.1f} ms/step, MFU {mfu} against {r['peak']}"
else: tfig = "-"
if decode and decode["rows"]:
    r = decode["rows"][0]
    dfig = f"{r['tokens_per_s']:,.1f} tokens/s ({r['ms_per_token']:.2f} ms/token), {r['new_tokens']} tokens, {r['precision']}"
else: dfig = "-"
if graphs and graphs["rows"]:
    r = graphs["rows"][0]
    gfig = f"{r['tokens_per_s']:,.1f} tokens/s ({r['ms_per_token']:.2f} ms/token), {r['new_tokens']} tokens, {r['precision']}"
    if decode and decode["rows"]: gfig += f", {r['tokens_per_s'] / decode['rows'][0]['tokens_per_s']:.1f}x c"
    gfig += f"; compile + first call {r['warmup_s']:.0f} s"
else: gfig = "-"
rows = [("a. notebooks, slow + cuda cells", status("NOTEBOOKS"), os.environ["S_NOTEBOOKS"], "see runs/gpu/notebooks.log"),
        ("b. gpu-124m training step", status("TRAIN"), os.environ["S_TRAIN"], tfig),
        ("c. gpu-124m decode, batch 1", status("DECODE"), os.environ["S_DECODE"], dfig),
        ("d. batch-1 decode, CUDA graphs", status("GRAPHS"), os.environ["S_GRAPHS"], gfig)]
machine = (train or decode or graphs or {}).get("machine", "")
if machine: print(machine)
print(f"{'part':<33} {'status':<16} {'wall s':>6}  figures")
for name, st, s, fig in rows: print(f"{name:<33} {st:<16} {s:>6}  {fig}")
EOF
for k in notebooks train decode graphs; do [ "${rc[$k]}" = 0 ] || exit 1; done
