#!/usr/bin/env bash
# The course's main job, from nothing: set up .venv, then run the most complete path the course has.
source "$(dirname "$0")/scripts/setup.sh"
out=${1:-runs/demo}
mkdir -p "$out"
echo "== 1. data: clean the bundled corpus and show its statistics"
chatgpt-course data clean data/tinyshakespeare.txt "$out/clean.txt" --stats
echo "== 2. data: a sample of synthetic chat data"
chatgpt-course data chat --n 1000 --out "$out/chat.jsonl" --show 2
echo "== done: outputs in $out/"
