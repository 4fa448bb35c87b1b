"""End-to-end tests of pretraining that notebook cells cannot do well: the `chatgpt-course pretrain` / `sample`
command line in separate processes. Covers: a run killed with SIGKILL and resumed ends with bitwise identical
weights to an uninterrupted run; two processes under torchrun (DDP, gloo) follow the loss trajectory of one process
with the same global batch; a NaN loss stops the run with the last good checkpoint intact; bad configs, corrupt or
incompatible checkpoints, empty token files and occupied output directories fail with a clear error (exit 2) and
overwrite nothing; pretrain then sample works from a fresh directory. Also: FSDP under torchrun (2 CPU processes)
follows DDP's losses, and its checkpoints load in one process and resume under FSDP; the step's loss is normalised
by the targets of the whole step (masked micro-batches of unequal sizes give the gradients of one big batch, an
empty micro-batch adds nothing); the JSONL that `data clean` writes trains; a time budget survives a resume; and
the regressions found in review (evaluate without a precision, gpt2-chat, data/ as an output). All runs are tiny
CPU models."""
import copy, hashlib, json, os, signal, subprocess, sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chatgpt_course.cli import main
from _cli import kill_after_checkpoint, train_losses  # tests/_cli.py
from chatgpt_course.core import data_path, precision_for, seed_everything
from chatgpt_course.checkpoint import latest_checkpoint, load_checkpoint, load_trained
from chatgpt_course.batches import write_token_file, token_byte_lengths
from chatgpt_course.model import GPT, GPTConfig
from chatgpt_course.optim import IGNORE_INDEX, make_optimizer, train_step
from chatgpt_course.train import PRESETS, evaluate

# a toy cpu-tiny: characters, 2 layers, 32 wide, 32-token windows, 1 thread (a fixed thread count keeps CPU math repeatable)
TINY = ["--preset", "cpu-tiny", "--tokenizer", "char", "--vocab-size", "66", "--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--seq-len", "32",
        "--batch-size", "4", "--warmup-steps", "3", "--eval-tokens", "512", "--sample-tokens", "0", "--threads", "1", "--no-progress"]
RUN_CLI = "import sys; from chatgpt_course.cli import main; sys.exit(main())"
STOP_CLI = """import sys, chatgpt_course.train as t
step = t.train_step
def stopping(*a, **k):
    if a[6] == 5: raise KeyboardInterrupt  # the step number: every rank stops before step 5
    return step(*a, **k)
t.train_step = stopping
from chatgpt_course.cli import main; sys.exit(main())"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

def cli(*args, **kw) -> subprocess.CompletedProcess:
    "Run `chatgpt-course ARGS` in a fresh Python process."
    return subprocess.run([sys.executable, "-c", RUN_CLI, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600, **kw)

def tree_digest(d:Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    flags = TINY + ["--max-steps", "40", "--ckpt-every", "5", "--eval-every", "10", "--dropout", "0.1"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    r = cli("pretrain", *flags, "--out", straight); assert r.returncode == 0, r.stderr
    # the child reports each checkpoint on stdout as it is saved; the test waits on that pipe, then kills it mid-run
    rc = kill_after_checkpoint(["pretrain", *flags, "--out", killed], "ckpt-00000010", ENV)
    assert rc == -signal.SIGKILL, "the run finished before it could be killed"
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
    model, _, _ = load_trained(out)  # verifies the checksums
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
    # a corrupt checkpoint (of a copy: other tests use this run): refused before anything is written
    import shutil
    run = tmp_path / "copy"; shutil.copytree(finished_run, run)
    ck = latest_checkpoint(run)
    with open(ck / "model.safetensors", "r+b") as f: f.seek(100); f.write(b"\xff\xfe")
    before = tree_digest(run)
    assert main(["pretrain", "--out", str(run), "--resume"]) == 2
    assert "is corrupt: model.safetensors" in capsys.readouterr().err
    assert tree_digest(run) == before

def test_a_run_saved_before_a_config_field_existed_still_resumes(finished_run, tmp_path, capsys):
    "A run.json that lacks a field added since (here `deterministic`, and the model's `pos`) reads it as the default: it resumes."
    import shutil
    run = tmp_path / "old"; shutil.copytree(finished_run, run)
    rec = json.loads((run / "run.json").read_text())
    del rec["config"]["deterministic"], rec["config"]["model"]["pos"]
    (run / "run.json").write_text(json.dumps(rec))
    assert main(["pretrain", "--out", str(run), "--resume"]) == 0, capsys.readouterr().err  # finished: it only evaluates again
    assert "done at step 4" in capsys.readouterr().out
    # a field that does differ is still refused, whether the saved config has it or lacks it
    assert main(["pretrain", "--out", str(run), "--resume", "--lr", "0.01"]) == 2
    assert f"config differs (lr: {PRESETS['cpu-tiny'].lr!r} there, 0.01 now)" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(run), "--resume", "--deterministic"]) == 2
    assert "config differs (deterministic: False there, True now)" in capsys.readouterr().err

def test_an_sft_run_saved_before_the_lora_fields_still_resumes(tmp_path):
    "check_run_dir with the config dataclass: the LoRA fields an older SFT run.json lacks count as their defaults."
    from dataclasses import asdict, replace
    from chatgpt_course.core import CourseError
    from chatgpt_course.finetune import SFT_MAY_CHANGE, SFTConfig
    from chatgpt_course.train import check_run_dir
    cfg = SFTConfig(base="runs/base", data="chat.jsonl")
    saved = asdict(cfg); del saved["lora_rank"], saved["lora_alpha"]
    run = tmp_path / "sft"; run.mkdir(); (run / "run.json").write_text(json.dumps({"config": saved}))
    assert check_run_dir(run, cfg, True, SFT_MAY_CHANGE) is None  # the same run: nothing refused (and no checkpoint yet)
    with pytest.raises(CourseError, match=r"config differs \(lora_rank: 0 there, 4 now\)"): check_run_dir(run, replace(cfg, lora_rank=4), True, SFT_MAY_CHANGE)
    with pytest.raises(CourseError, match=r"config differs \(lr: 0.0003 there, 0.1 now\)"): check_run_dir(run, replace(cfg, lr=0.1), True, SFT_MAY_CHANGE)

def test_empty_token_file(tmp_path, capsys):
    write_token_file([], tmp_path / "empty.bin", vocab_size=66, tokenizer="char")
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--max-steps", "2", "--train-tokens", str(tmp_path / "empty.bin"),
                 "--val-tokens", str(tmp_path / "empty.bin"), "--out", str(out)]) == 2
    assert "is empty (0 tokens)" in capsys.readouterr().err
    assert not out.exists()

# ---- the step: a loss summed over targets, divided by the targets of the whole step

def _masked_batches(seed=0, V=50, T=12):
    "Micro-batches of unequal sizes with unequal numbers of learned targets, and one that learns nothing."
    g = torch.Generator().manual_seed(seed)
    out = []
    for B, keep in ((3, 0.9), (1, 0.2), (2, 0.0), (4, 0.5)):
        x = torch.randint(V, (B, T), generator=g); y = torch.randint(V, (B, T), generator=g)
        y[torch.rand(B, T, generator=g) >= keep] = IGNORE_INDEX
        out.append((x, y))
    return out

def _grads_after_step(batches):
    seed_everything(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=16, dropout=0.0))
    opt = make_optimizer(m, lr=0.0, weight_decay=0.0)  # lr 0: the step leaves the weights, we read the gradients
    grads = {}
    def keep(_): grads.update({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    opt.register_step_pre_hook(lambda *a: keep(None))
    prec = precision_for("cpu")
    r = train_step(m, batches, opt, prec, prec.scaler(), grad_clip=0.0)
    return r, grads

def test_masked_micro_batches_give_the_gradients_of_one_batch():
    mbs = _masked_batches()
    assert len({int((y != IGNORE_INDEX).sum()) for _, y in mbs}) == len(mbs)  # every micro-batch holds a different count
    r_split, g_split = _grads_after_step(mbs)
    one = (torch.cat([x for x, _ in mbs]), torch.cat([y for _, y in mbs]))
    r_one, g_one = _grads_after_step([one])
    assert r_split["targets"] == r_one["targets"] == sum(int((y != IGNORE_INDEX).sum()) for _, y in mbs)
    assert abs(r_split["loss"] - r_one["loss"]) < 1e-6
    assert g_split.keys() == g_one.keys() and g_split
    for n in g_one: assert torch.allclose(g_split[n], g_one[n], atol=1e-6, rtol=0), n
    # the mean of the per-micro-batch means weighs targets differently: a check that could not tell them apart proves nothing
    seed_everything(0); m = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=16, dropout=0.0))
    with torch.no_grad(): means = [m(x, y)[1].item() for x, y in mbs if (y != IGNORE_INDEX).any()]
    assert abs(sum(means) / len(means) - r_one["loss"]) > 1e-3

def test_a_micro_batch_without_targets_adds_nothing():
    mbs = _masked_batches()
    full = [(x, y) for x, y in mbs if (y != IGNORE_INDEX).any()]
    empty = [(x, y) for x, y in mbs if not (y != IGNORE_INDEX).any()]
    assert empty, "the fixture holds an empty micro-batch"
    r_with, g_with = _grads_after_step(mbs)
    r_without, g_without = _grads_after_step(full)
    assert r_with["targets"] == r_without["targets"] and r_with["loss"] == pytest.approx(r_without["loss"], abs=1e-7)
    for n in g_without:
        assert torch.isfinite(g_with[n]).all() and torch.allclose(g_with[n], g_without[n], atol=1e-7), n
    r_none, g_none = _grads_after_step(empty)  # a whole step with nothing to learn: no update, no 0/0
    assert r_none["targets"] == 0 and r_none["loss"] is None and not g_none

# ---- regressions found in review

def test_evaluate_without_a_precision(finished_run):
    "evaluate(...) used to raise NameError without prec: its module never imported contextlib."
    model, tok, _ = load_trained(finished_run)
    tokens = torch.tensor(tok.encode("ROMEO:\nWhat light through yonder window breaks?\n" * 4)).numpy()
    ev = evaluate(model, tokens, token_byte_lengths(tok), seq_len=32, batch_size=2)
    assert ev["tokens"] == len(tokens) - 1 and ev["bpb"] > 0

def test_gpt2_chat_is_an_accepted_tokenizer():
    from chatgpt_course.train import check_config
    import dataclasses
    assert check_config(dataclasses.replace(PRESETS["gpu-124m"], tokenizer="gpt2-chat")) == 32

def test_output_inside_the_bundled_data_folder_is_refused(capsys):
    inside = data_path() / "x"
    before = sorted(p.name for p in data_path().iterdir())
    assert main(["pretrain", *TINY, "--max-steps", "1", "--out", str(inside)]) == 2
    err = capsys.readouterr().err
    assert "bundled data folder" in err and err.count("\n") == 1, err
    assert not inside.exists() and sorted(p.name for p in data_path().iterdir()) == before

def test_pretrain_on_the_jsonl_that_data_clean_writes(tmp_path):
    clean = tmp_path / "x" / "clean.jsonl"
    r = cli("data", "clean", data_path("tinyshakespeare.txt"), clean); assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in clean.read_text().splitlines()]
    assert len(rows) > 1000 and all(set(r) == {"text"} for r in rows)
    out = tmp_path / "x" / "pre"
    r = cli("pretrain", *TINY, "--max-steps", "2", "--eval-every", "2", "--data", clean, "--out", out)
    assert r.returncode == 0 and "done at step 2" in r.stdout, r.stderr
    spec = json.loads((out / "data" / "train.bin.json").read_text())
    val = json.loads((out / "data" / "val.bin.json").read_text())
    # one document per row, none lost: each row's text and the blank line that separates documents in a token file
    assert spec["n_bytes"] + val["n_bytes"] == sum(len(r["text"].encode()) + len("\n\n") for r in rows)

def test_a_time_budget_survives_a_resume(tmp_path):
    "A --max-minutes run resumed after its budget is spent does not get a fresh budget (the clock is in the checkpoint)."
    out = tmp_path / "timed"
    flags = TINY + ["--max-steps", "100000", "--max-minutes", "0.05", "--eval-every", "100000", "--ckpt-every", "100000"]
    r = cli("pretrain", *flags, "--out", out); assert r.returncode == 0, r.stderr
    first = train_losses(out); assert 0 < len(first) < 100000
    meta = json.loads((latest_checkpoint(out) / "meta.json").read_text())
    assert meta["time_s"] >= 3.0
    r = cli("pretrain", "--out", out, "--resume", "--no-progress"); assert r.returncode == 0, r.stderr
    assert train_losses(out) == first  # the budget was already spent: no step more, and no learning-rate jump
    assert "budget is spent" in r.stderr

def test_a_damaged_checkpoint_is_refused_before_the_run_directory_is_touched(finished_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "copy"; shutil.copytree(finished_run, run)
    shutil.rmtree(run / "data")  # a resume that wrote anything would make the token files again
    with open(latest_checkpoint(run) / "optimizer.pt", "r+b") as f: f.seek(50); f.write(b"\x00\x11")
    before = tree_digest(run)
    assert main(["pretrain", "--out", str(run), "--resume"]) == 2
    assert "is corrupt: optimizer.pt" in capsys.readouterr().err
    assert tree_digest(run) == before and not (run / "data").exists()

# ---- FSDP beside DDP

def torchrun(*args, tmp_path) -> subprocess.CompletedProcess:
    script = tmp_path / "cli.py"; script.write_text(RUN_CLI + "\n")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=600)

def test_fsdp_follows_ddp_and_its_checkpoints_load_in_one_process_and_resume(tmp_path):
    flags = TINY + ["--max-steps", "8", "--batch-tokens", str(4 * 32 * 2 * 2), "--eval-every", "4", "--ckpt-every", "4", "--dropout", "0.0"]
    r = torchrun("pretrain", *flags, "--out", tmp_path / "ddp", tmp_path=tmp_path); assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun("pretrain", *flags, "--parallel", "fsdp", "--out", tmp_path / "fsdp", tmp_path=tmp_path); assert r.returncode == 0, r.stderr[-3000:]
    assert "2 proc, fsdp" in r.stderr
    ddp, fsdp = train_losses(tmp_path / "ddp"), train_losses(tmp_path / "fsdp")
    assert len(ddp) == len(fsdp) == 8
    # stated tolerance: the same arithmetic, reduced in a different order (all-reduce vs reduce-scatter): 1e-5 relative
    assert fsdp == pytest.approx(ddp, rel=1e-5), (ddp, fsdp)
    # the FSDP checkpoint is an ordinary one: it loads in one process and equals DDP's weights to rounding
    m_f, _, meta = load_trained(tmp_path / "fsdp"); m_d, _, _ = load_trained(tmp_path / "ddp")
    assert meta["step"] == 8 and meta["world_size"] == 2
    for (n, a), b in zip(m_f.named_parameters(), m_d.parameters()): assert torch.allclose(a, b, atol=1e-5), n
    # interrupted after the checkpoint at step 4 (every rank stops at step 5, as Ctrl-C would), then resumed under FSDP
    stop = tmp_path / "stop_at_5.py"; stop.write_text(STOP_CLI)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(stop),
                        "pretrain", *flags, "--parallel", "fsdp", "--out", str(tmp_path / "resumed")], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode != 0 and latest_checkpoint(tmp_path / "resumed").name == "ckpt-00000004", r.stderr[-3000:]
    r = torchrun("pretrain", "--out", tmp_path / "resumed", "--resume", "--no-progress", tmp_path=tmp_path); assert r.returncode == 0, r.stderr[-3000:]
    assert "2 proc, fsdp" in r.stderr
    assert train_losses(tmp_path / "resumed") == pytest.approx(fsdp, rel=1e-6)
