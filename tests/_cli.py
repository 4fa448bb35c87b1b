"""Shared by the data-stage tests: run `chatgpt-course data ...` as a user would, snapshot a folder, and see what a
command imports."""
import hashlib, json, os, subprocess, sys
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

# Runs the command line's entry point, then reports on its last line which heavy modules the command imported.
_REPORTER = """
import json, sys, time
t0 = time.perf_counter()
from chatgpt_course.cli import main
try: rc = main(sys.argv[1:])
except SystemExit as e: rc = e.code  # --help exits through argparse
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t0,
                  "loaded": sorted(m for m in ("torch", "matplotlib") if m in sys.modules)}))
"""

def imports_of(*args, cwd) -> dict:
    "Run `chatgpt-course ARGS` in a fresh process: its exit status, its time, and which of torch/matplotlib it loaded."
    r = subprocess.run([sys.executable, "-c", _REPORTER, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert r.returncode == 0 and r.stdout.strip(), (args, r.stdout, r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])

# Runs the command line with each checkpoint reported on stdout as it is saved, so a test can kill it mid-run.
WATCH_CLI = """import sys, chatgpt_course.train as t
save = t.save_checkpoint
def saved(*a, **k):
    p = save(*a, **k); print("saved", p.name, flush=True); return p
t.save_checkpoint = saved
from chatgpt_course.cli import main; sys.exit(main())"""

def kill_after_checkpoint(args, ckpt:str, env:dict) -> int:
    "Run `chatgpt-course ARGS`, SIGKILL it once it reports checkpoint `ckpt` (e.g. 'ckpt-00000010'); its return code."
    import signal
    proc = subprocess.Popen([sys.executable, "-c", WATCH_CLI, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        for line in proc.stdout:
            if line.startswith(f"saved {ckpt}"): break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.stdout.close(); proc.wait()
    return proc.returncode

def train_losses(run:Path) -> list[float]:
    "The per-step training losses of a run's log.jsonl."
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]
