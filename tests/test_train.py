"""End-to-end tests of pretraining that notebook cells cannot do well: the `chatgpt-course pretrain` / `sample`
command line in separate processes. Covers: a run killed with SIGKILL and resumed ends with bitwise identical
weights to an uninterrupted run; two processes under torchrun (DDP, gloo) follow the loss trajectory of one process
with the same global batch; a NaN loss stops the run with the last good checkpoint intact; bad configs, corrupt or
incompatible checkpoints, empty token files and occupied output directories fail with a clear error (exit 2) and
overwrite nothing; pretrain then sample works from a fresh directory. All runs are tiny CPU models."""
import hashlib, json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chatgpt_course.cli import main
from chatgpt_course.checkpoint import latest_checkpoint, load_checkpoint
from chatgpt_course.batches import write_token_file
from chatgpt_course.train import PRESETS, load_pretrained

# a toy cpu-tiny: characters, 2 layers, 32 wide, 32-token windows, 1 thread (a fixed thread count keeps CPU math repeatable)
TINY = ["--preset", "cpu-tiny", "--tokenizer", "char", "--vocab-size", "66", "--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--seq-len", "32",
        "--batch-size", "4", "--warmup-steps", "3", "--eval-tokens", "512", "--sample-tokens", "0", "--threads", "1", "--no-progress"]
RUN_CLI = "import sys; from chatgpt_course.cli import main; sys.exit(main())"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

def cli(*args, **kw) -> subprocess.CompletedProcess:
    "Run `chatgpt-course ARGS` in a fresh Python process."
    return subprocess.run([sys.executable, "-c", RUN_CLI, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600, **kw)

def tree_digest(d:Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}

def train_losses(run:Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]

def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    flags = TINY + ["--max-steps", "40", "--ckpt-every", "5", "--eval-every", "10", "--dropout", "0.1"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    r = cli("pretrain", *flags, "--out", straight); assert r.returncode == 0, r.stderr
    proc = subprocess.Popen([sys.executable, "-c", RUN_CLI, "pretrain", *flags, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            latest = killed / "LATEST"
            if latest.exists() and latest.read_text().strip() >= "ckpt-00000010": break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    k = int(latest_checkpoint(killed).name[5:])
    assert 10 <= k < 40, k
    r = cli("pretrain", "--out", killed, "--resume", "--no-progress"); assert r.returncode == 0, r.stderr
    a, b = latest_checkpoint(straight), latest_checkpoint(killed)
    assert a.name == b.name == "ckpt-00000040"
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[n], tb[n]) for n in ta)
    oa, ob = (torch.load(c / "optimizer.pt", weights_only=True) for c in (a, b))
    assert all(torch.equal(oa["state"][i]["exp_avg_sq"], ob["state"][i]["exp_avg_sq"]) for i in oa["state"])
    assert train_losses(straight) == train_losses(killed)  # the log was cut back to the checkpoint and continued

def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    # one process: 4 windows x 2 micro-batches; two processes (gloo): 4 windows x 1 micro-batch each; the same windows
    flags = TINY + ["--max-steps", "8", "--batch-tokens", str(4 * 32 * 2), "--eval-every", "4", "--ckpt-every", "4"]
    script = tmp_path / "cli.py"; script.write_text(RUN_CLI + "\n")
    r = cli("pretrain", *flags, "--out", tmp_path / "one"); assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
                        "pretrain", *flags, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 accum x 2 proc" in r.stderr and r.stdout.count("done at step 8") == 1  # only rank 0 reports
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert len(one) == len(two) == 8
    # stated tolerance: gradients are averaged in a different order (all-reduce vs accumulation): 1e-5 relative
    assert one == pytest.approx(two, rel=1e-5), (one, two)
    assert one[-1] < one[0]
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert (run["world_size"], run["grad_accum"]) == (2, 1)

def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "nan"  # lr 1e6: step 1 is computed from sane weights, its update blows them up, step 2 is NaN
    r = cli("pretrain", *TINY, "--max-steps", "20", "--lr", "1e6", "--min-lr", "1e6", "--warmup-steps", "0",
            "--grad-clip", "0", "--ckpt-every", "1", "--eval-every", "100", "--out", out)
    assert r.returncode == 2 and "at step 2" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert latest_checkpoint(out).name == "ckpt-00000001"
    model, _, _ = load_pretrained(out)  # verifies the checksums
    assert all(torch.isfinite(p).all() for p in model.parameters())

def test_pretrain_then_sample(tmp_path, capsys):
    out = tmp_path / "run"
    r = cli("pretrain", *TINY, "--max-steps", "10", "--eval-every", "5", "--ckpt-every", "5", "--out", out)
    assert r.returncode == 0 and "done at step 10" in r.stdout, r.stderr
    assert {"run.json", "log.jsonl", "loss.png", "lr.png", "grad_norm.png", "LATEST", "tokenizer", "data"} <= {p.name for p in out.iterdir()}
    r = cli("sample", "--checkpoint", out, "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "1")
    assert r.returncode == 0 and r.stdout.startswith("ROMEO:") and len(r.stdout) > 30, r.stderr
    assert main(["sample", "--checkpoint", str(latest_checkpoint(out)), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "1"]) == 0
    assert capsys.readouterr().out == r.stdout  # a run directory means its latest checkpoint; the seed makes it repeatable
    assert main(["sample", "--checkpoint", str(out), "--prompt", "X" * 40]) == 2
    assert "longer than the model's context of 32" in capsys.readouterr().err

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    assert main(["pretrain", *TINY, "--max-steps", "4", "--eval-every", "2", "--ckpt-every", "2", "--out", str(out)]) == 0
    return out

@pytest.mark.parametrize("flags, message", [
    (["--batch-tokens", "100"], "not divisible by batch_size x seq_len x processes"),
    (["--seq-len", "64"], "longer than the model's block_size 32"),
    (["--lr", "0"], "lr must be positive"),
    (["--lr", "-0.001"], "lr must be positive"),
    (["--n-head", "3"], "3"),
    (["--tokenizer", "nope"], "'nope'"),
])
def test_configs_that_cannot_work(tmp_path, capsys, flags, message):
    out = tmp_path / "bad"
    assert main(["pretrain", *TINY, "--max-steps", "2", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()  # nothing was written

def test_occupied_or_damaged_run_directories(finished_run, tmp_path, capsys):
    before = tree_digest(finished_run)
    # the same command again without --resume, and a different config: refused, nothing touched
    assert main(["pretrain", *TINY, "--max-steps", "4", "--out", str(finished_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["pretrain", *TINY, "--max-steps", "4", "--lr", "0.01", "--out", str(finished_run)]) == 2
    assert f"different config (lr: {PRESETS['cpu-tiny'].lr!r} there, 0.01 now)" in capsys.readouterr().err
    # resuming with an incompatible model shape: refused
    assert main(["pretrain", "--out", str(finished_run), "--resume", "--n-layer", "3"]) == 2
    assert "config differs (model.n_layer: 2 there, 3 now)" in capsys.readouterr().err
    assert tree_digest(finished_run) == before
    # a corrupt checkpoint: refused before anything is written
    ck = latest_checkpoint(finished_run)
    with open(ck / "model.safetensors", "r+b") as f: f.seek(100); f.write(b"\xff\xfe")
    before = tree_digest(finished_run)
    assert main(["pretrain", "--out", str(finished_run), "--resume"]) == 2
    assert "is corrupt: model.safetensors" in capsys.readouterr().err
    assert tree_digest(finished_run) == before

def test_empty_token_file(tmp_path, capsys):
    write_token_file([], tmp_path / "empty.bin", vocab_size=66, tokenizer="char")
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--max-steps", "2", "--train-tokens", str(tmp_path / "empty.bin"),
                 "--val-tokens", str(tmp_path / "empty.bin"), "--out", str(out)]) == 2
    assert "is empty (0 tokens)" in capsys.readouterr().err
    assert not out.exists()
