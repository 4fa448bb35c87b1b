"""07b's `evals` from outside: the intervals and the paired test against SciPy, the hand-worked McNemar case, `run_tasks` on
a tiny model, and `chatgpt-course eval tasks` end to end on a tiny trained checkpoint (seconds):

- `wilson_interval(k, n)` equals `scipy.stats.binomtest(k, n).proportion_ci(method="wilson")` (at SciPy's exact z);
- `mcnemar(a, b)` equals `scipy.stats.binomtest` on the discordant pairs, whatever the agreeing items; 9 to 1 of 10
  discordant pairs gives p = 2 (1 + 10) / 2^10 = 22/1024;
- `run_tasks` returns consistent counts (accuracy = correct / n, inside its interval, every wrong item with an error
  kind, topics and arithmetic summing to the items), and refuses an unknown task, a tokenizer without the chat tokens or a prompt longer than the context;
- `eval tasks` prints its table and writes the JSON; an unknown task, the train split, a checkpoint without the chat
  tokens and an existing --json file are each one line, exit status 2, and nothing written;
- `eval mc` passes its flags to 07c's `run_mc` and prints acc and acc_norm with their intervals.
"""
import json, math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings, strategies as st

from chatgpt_course.core import CourseError
from chatgpt_course.evals import TASKS, bootstrap_interval, mcnemar, paired_bootstrap, run_tasks, wilson_interval
from _cli import course, in_process, refused, tiny_base_flags

Z95 = scipy.stats.norm.ppf(0.975)

@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), frac=st.floats(0, 1))
def test_wilson_equals_scipy(n, frac):
    k = round(frac * n)
    ref = scipy.stats.binomtest(k, n).proportion_ci(method="wilson")
    lo, hi = wilson_interval(k, n, z=Z95)
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
    assert 0 <= lo <= k / n <= hi <= 1

@settings(max_examples=200, deadline=None)
@given(b=st.integers(0, 60), c=st.integers(0, 60), both_right=st.integers(0, 30), both_wrong=st.integers(0, 30))
def test_mcnemar_equals_binomtest_on_the_discordant_pairs(b, c, both_right, both_wrong):
    if not b + c + both_right + both_wrong: return
    a_right = [1] * both_right + [0] * both_wrong + [1] * b + [0] * c
    b_right = [1] * both_right + [0] * both_wrong + [0] * b + [1] * c
    res = mcnemar(a_right, b_right)
    assert (res["a_only"], res["b_only"], res["discordant"], res["n"]) == (b, c, b + c, len(a_right))
    ref = scipy.stats.binomtest(b, b + c).pvalue if b + c else 1.0
    assert res["p_value"] == pytest.approx(ref, abs=1e-12)

def test_the_hand_worked_case():
    "Ten discordant pairs, nine to A: both tails of Binomial(10, 1/2) at 0 and 1 (and 9, 10), 2 (1 + 10) / 1024."
    a_right, b_right = [1] * 9 + [0] + [1] * 30 + [0] * 10, [0] * 9 + [1] + [1] * 30 + [0] * 10
    assert mcnemar(a_right, b_right)["p_value"] == 22 / 1024 == 2 * (math.comb(10, 0) + math.comb(10, 1)) / 2 ** 10
    assert mcnemar(b_right, a_right)["p_value"] == 22 / 1024  # symmetric
    diff = paired_bootstrap(a_right, b_right)
    assert diff["diff"] == pytest.approx(8 / 50) and diff["ci"][0] > 0

def test_bad_counts_are_refused():
    for call, says in ((lambda: wilson_interval(3, 2), "k=3 right out of n=2"), (lambda: wilson_interval(-1, 2), "k=-1"),
                       (lambda: mcnemar([1, 0], [1]), "the same items"), (lambda: bootstrap_interval([]), "non-empty"),
                       (lambda: bootstrap_interval([0, 2]), "only 0/1")):
        with pytest.raises(CourseError, match=says): call()

@pytest.fixture(scope="module")
def tiny():
    "An untrained one-layer GPT and a 300-token BPE with the chat tokens: it answers (badly) in milliseconds."
    from chatgpt_course.model import GPT, GPTConfig
    from chatgpt_course.tokenizer import BPETokenizer
    tok = BPETokenizer.train("What is two plus two? Four. The capital of France is Paris. " * 20, 300)
    return GPT(GPTConfig(block_size=512, vocab_size=tok.n_vocab, n_layer=1, n_head=2, n_embd=16)).eval(), tok

def test_run_tasks_counts_are_consistent(tiny):
    res = run_tasks(*tiny, n=3, max_new_tokens=6)
    assert list(res["tasks"]) == list(TASKS) and res["settings"]["n"] == 3
    for t, v in res["tasks"].items():
        assert v["n"] == len(v["items"]) and 1 <= v["n"] <= 3
        assert v["correct"] == sum(r["correct"] for r in v["items"])
        assert v["accuracy"] == pytest.approx(v["correct"] / v["n"]) and v["ci"][0] <= v["accuracy"] <= v["ci"][1]
        assert v["n"] - v["correct"] == sum(v["errors"].values())  # every wrong reply has a kind
        assert all((r["error"] is None) == r["correct"] and r["task"] == t for r in v["items"])
    total = sum(v["n"] for v in res["tasks"].values())
    assert sum(v["n"] for v in res["by_topic"].values()) == total
    assert sum(c["n"] for cells in res["arithmetic"].values() for c in cells.values()) == res["tasks"]["add_sub"]["n"] + res["tasks"]["mul"]["n"]
    json.dumps(res)  # the command line writes it as it is

def test_run_tasks_refusals(tiny):
    from chatgpt_course.model import GPT, GPTConfig
    from chatgpt_course.tokenizer import CharTokenizer
    with pytest.raises(CourseError, match="unknown task 'poem'"): run_tasks(*tiny, "persona,poem")
    with pytest.raises(CourseError, match="would measure memorisation"): run_tasks(*tiny, "persona", split="train")
    plain = CharTokenizer.train("abc ")
    with pytest.raises(CourseError, match="lacks the chat tokens"):
        run_tasks(GPT(GPTConfig(block_size=32, vocab_size=plain.n_vocab, n_layer=1, n_head=1, n_embd=8)), plain, "persona")
    with pytest.raises(CourseError, match="outside the model's vocabulary"):  # chat token ids beyond the embedding table
        run_tasks(GPT(GPTConfig(block_size=32, vocab_size=260, n_layer=1, n_head=1, n_embd=8)), tiny[1], "persona")
    with pytest.raises(CourseError, match="task 'follow_up': a prompt of .* tokens does not fit the model's context of 32"):
        run_tasks(GPT(GPTConfig(block_size=32, vocab_size=tiny[1].n_vocab, n_layer=1, n_head=1, n_embd=8)), tiny[1], "follow_up")

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    "A tiny chat model (base + two SFT steps) and a character-level base without the chat tokens, made in this process."
    from chatgpt_course.chat_data import make_chat_dataset
    from chatgpt_course.cli import main
    from chatgpt_course.files import write_jsonl
    d = tmp_path_factory.mktemp("evals")
    chat = write_jsonl(make_chat_dataset(32, seed=0), d / "chat.jsonl")
    flags = tiny_base_flags(); char = list(flags); char[char.index("--tokenizer") + 1] = "char"
    assert main(["pretrain", *map(str, flags), "--out", str(d / "base")]) == 0
    assert main(["sft", "--base", str(d / "base"), "--data", str(chat), "--heldout", "", "--seq-len", "128", "--batch-size", "4",
                 "--max-steps", "2", "--eval-tokens", "0", "--threads", "1", "--no-progress", "--out", str(d / "sft")]) == 0
    assert main(["pretrain", *map(str, char), "--out", str(d / "char")]) == 0
    return d / "sft", d / "char"

def test_eval_tasks_end_to_end(checkpoints, tmp_path):
    out = tmp_path / "tasks.json"
    r = course("eval", "tasks", "--checkpoint", checkpoints[0], "--tasks", "add_sub,lookalike", "--n", "3", "--max-new-tokens", "8",
               "--device", "cpu", "--json", out)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["tasks", "n", "accuracy"] and "95 % interval" in lines[0]
    assert [ln.split()[0] for ln in lines[1:3]] == ["add_sub", "lookalike"] and lines[-1] == f"wrote {out}"
    saved = json.loads(out.read_text())
    assert saved["checkpoint"] == str(checkpoints[0]) and list(saved["tasks"]) == ["add_sub", "lookalike"]
    for v in saved["tasks"].values():
        assert v["n"] == 3 and v["correct"] == sum(x["correct"] for x in v["items"]) and v["ci"][0] <= v["accuracy"] <= v["ci"][1]

def test_eval_tasks_bad_input_is_one_line(checkpoints, tmp_path, capsys):
    sft, char = checkpoints
    out = tmp_path / "tasks.json"
    for args, needle in (((sft, "--tasks", "add_sub,poem"), "unknown task 'poem'"),
                         ((sft, "--split", "train"), "split='train'"),
                         ((char, "--n", "1"), "lacks the chat tokens"),
                         ((tmp_path / "nothing", "--n", "1"), "does not exist")):
        refused(in_process(capsys, "eval", "tasks", "--checkpoint", *args, "--device", "cpu", "--json", out), out, needle, command="eval")
    out.write_text("{}")
    r = in_process(capsys, "eval", "tasks", "--checkpoint", sft, "--n", "1", "--json", out)
    assert r.returncode == 2 and "already exists; pass --force" in r.stderr and out.read_text() == "{}"

def test_eval_mc_is_a_thin_layer(checkpoints, capsys):
    "`eval mc` hands its flags to 07c's run_mc: a table on a tiny model, and an unknown task in one line."
    from chatgpt_course.cli import main
    capsys.readouterr()
    assert main(["eval", "mc", "--checkpoint", str(checkpoints[0]), "--task", "facts", "--n", "4", "--device", "cpu"]) == 0
    head, row = capsys.readouterr().out.splitlines()
    assert head.split()[:3] == ["task", "n", "acc"] and row.split()[:2] == ["facts", "4"]
    r = in_process(capsys, "eval", "mc", "--checkpoint", checkpoints[0], "--task", "poetry", "--device", "cpu")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown multiple-choice task 'poetry'" in r.stderr
