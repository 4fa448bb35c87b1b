"""Shared by the command-line tests: run `chatgpt-course data ...` as a user would, snapshot a folder, and see what a
command imports; run a training command in a fresh process, build tiny base and chat models for the later stages, and
kill a run at a checkpoint."""
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

# ---- the training stages: tiny runs through the command line, one thread each

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
RUN_CLI = "import sys; from chatgpt_course.cli import main; sys.exit(main())"

def course(*args) -> subprocess.CompletedProcess:
    "`chatgpt-course ARGS` in a fresh process (the console script's entry point), on one thread."
    return subprocess.run([sys.executable, "-c", RUN_CLI, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600)

def module_cli(module:str, *args) -> subprocess.CompletedProcess:
    "`python -m chatgpt_course.MODULE ARGS`: a command through its own module (whether or not the console script lists it yet)."
    return subprocess.run([sys.executable, "-m", f"chatgpt_course.{module}", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600)

def tiny_base_flags(n_layer:int=1, block_size:int=128, max_steps:int=2) -> list[str]:
    "`pretrain` flags of a tiny base model with the chat tokens (a 300-token BPE): seconds on one thread."
    return ["--preset", "cpu-tiny", "--tokenizer", "bpe:300", "--vocab-size", "320", "--n-layer", str(n_layer), "--n-embd", "32", "--n-head", "2",
            "--block-size", str(block_size), "--seq-len", "64", "--batch-size", "4", "--max-steps", str(max_steps), "--warmup-steps", "1",
            "--eval-tokens", "256", "--sample-tokens", "0", "--threads", "1", "--no-progress"]

def tiny_base(out:Path, **kw) -> Path:
    "A tiny base run in `out` (tiny_base_flags' keywords choose its depth, context and steps)."
    r = course("pretrain", *tiny_base_flags(**kw), "--out", out); assert r.returncode == 0, r.stderr
    return out

def tiny_chat_model(d:Path, block_size:int=128, *sft_flags) -> Path:
    "A chat model to tune further: a tiny base in d/base, fine-tuned for two steps on 32 chats (d/chat.jsonl) into d/sft."
    from chatgpt_course.chat_data import make_chat_dataset
    from chatgpt_course.files import write_jsonl
    tiny_base(d / "base", block_size=block_size)
    write_jsonl(make_chat_dataset(32, seed=0), d / "chat.jsonl")
    r = course("sft", "--base", d / "base", "--data", d / "chat.jsonl", *sft_flags, "--out", d / "sft", "--seq-len", "128", "--batch-size", "4",
               "--max-steps", "2", "--eval-tokens", "0", "--threads", "1", "--no-progress"); assert r.returncode == 0, r.stderr
    return d / "sft"

def killed_and_resumed(command:list, # a training command and its flags, without --out: ["rl", "--base", ...]
                       tmp:Path, kill_at:int, last:int, # where the two runs go; the checkpoint to kill after; the run's last step
                       module:str|None=None, # run it (but not the killed copy) through `python -m chatgpt_course.MODULE` instead
                       after_kill=None, # after_kill(killed): checks on the killed run before it resumes
                      ) -> tuple[Path, Path, subprocess.CompletedProcess]:
    "The command run straight into tmp/straight, and again into tmp/killed, SIGKILLed after checkpoint `kill_at` and resumed: (straight, killed, the straight run's process)."
    import signal
    from chatgpt_course.checkpoint import latest_checkpoint
    run = (lambda *a: module_cli(module, *a[1:])) if module else course
    straight, killed = tmp / "straight", tmp / "killed"
    done = run(*command, "--out", straight); assert done.returncode == 0, done.stderr
    rc = kill_after_checkpoint([*command, "--out", killed], f"ckpt-{kill_at:08d}", ENV)
    assert rc == -signal.SIGKILL, "the run finished before it could be killed"
    assert kill_at <= int(latest_checkpoint(killed).name[5:]) < last
    if after_kill: after_kill(killed)
    r = run(command[0], "--out", killed, "--resume", "--no-progress"); assert r.returncode == 0, r.stderr
    for d in (straight, killed): assert latest_checkpoint(d).name == f"ckpt-{last:08d}"
    return straight, killed, done

def in_process(capsys, *args) -> subprocess.CompletedProcess:
    "`chatgpt-course ARGS` run inside this process (for refusals, which never train): its return code and stderr."
    from chatgpt_course.cli import main
    capsys.readouterr()  # drop what came before
    rc = main([str(a) for a in args]); err = capsys.readouterr().err
    return subprocess.CompletedProcess(args, rc, "", err)

def refused(r:subprocess.CompletedProcess, out:Path, *needles, command:str="sft"):
    "A refusal: exit status 2, one line `chatgpt-course COMMAND: error: ...` that holds every needle, and nothing written to `out`."
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    msg = r.stderr.strip().splitlines()
    assert len(msg) == 1 and msg[0].startswith(f"chatgpt-course {command}: error:"), r.stderr
    assert all(n in msg[0] for n in needles), (needles, msg[0])
    assert not out.exists(), "a refused run wrote its directory"


TINY_SFT = ["--seq-len", "128", "--batch-size", "4", "--warmup-steps", "2", "--eval-rows", "16", "--eval-tokens", "256", "--threads", "1", "--no-progress"]

def sft_work(d:Path) -> Path:
    "A tiny base run with the chat tokens (d/base), a chat file (d/chat.jsonl) and a held-out chat file (d/heldout.jsonl)."
    from chatgpt_course.chat_data import make_chat_dataset
    from chatgpt_course.files import write_jsonl
    tiny_base(d / "base", n_layer=2, max_steps=4)
    write_jsonl(make_chat_dataset(64, seed=0), d / "chat.jsonl")
    write_jsonl(make_chat_dataset(16, seed=0, split="heldout"), d / "heldout.jsonl")
    return d

def sft_flags(work:Path, out, *more) -> list:
    "`sft` flags of a tiny run on `sft_work`'s files into `out` (None: no --out), TINY_SFT, then `more`."
    return ["sft", "--base", work / "base", "--data", work / "chat.jsonl", "--heldout", work / "heldout.jsonl", *(["--out", out] if out else []), *TINY_SFT, *more]
