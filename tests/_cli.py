"""Shared by the data-stage tests: run `chatgpt-course data ...` as a user would, and snapshot a folder."""
import hashlib, os, subprocess, sys
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("chatgpt-course")


def cli(*args, cwd):
    "Run `chatgpt-course data ...` as a user would (the console script), with a fresh hash seed."
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-c", "import sys; from chatgpt_course.cli import main; sys.exit(main())"]
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    return subprocess.run(cmd + ["data", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)

def snapshot(folder: Path) -> dict:
    "Name -> (size, mtime, sha256) of each file in `folder`: proof that nothing there was written."
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in folder.iterdir()}
