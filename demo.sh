#!/usr/bin/env bash
# The course's main job, from nothing: set up .venv, then run the most complete path the course has.
# Idempotent: a second run into the same folder replaces its outputs (--force, and a fresh pretraining run).
source "$(dirname "$0")/scripts/setup.sh"
out=${1:-runs/demo}
mkdir -p "$out"
echo "== 1. data: clean the bundled corpus and show its statistics"
chatgpt-course data clean data/tinyshakespeare.txt "$out/clean.txt" --stats --force
echo "== 2. data: a sample of synthetic chat data"
chatgpt-course data chat --n 1000 --out "$out/chat.jsonl" --show 2 --force
echo "== 3. pretrain: a short cpu-tiny run (BPE-2048 tokenizer, 4 layers x 128) on tiny Shakespeare, 1-2 minutes on 2 cores"
rm -rf "$out/pretrain"  # a fresh run each time (pretrain never overwrites a run; --resume would continue it)
# OMP_WAIT_POLICY=PASSIVE: on a machine shared with other jobs, spinning OpenMP threads slow a 2-thread run many times over
OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} chatgpt-course pretrain --preset cpu-tiny --out "$out/pretrain" --max-steps 400 --eval-every 100 --ckpt-every 200
echo "== 4. sample: continue a prompt with the model just trained"
chatgpt-course sample --checkpoint "$out/pretrain" --prompt "ROMEO:" --max-new-tokens 150
echo "== done: outputs in $out/"
