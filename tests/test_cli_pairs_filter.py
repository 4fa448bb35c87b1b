"""Two commands of issue 12, from outside. `chatgpt-course data pairs` writes 01e's preference pairs and prints their
summary, starts without PyTorch, and what it writes is what `dpo --pairs` reads (`read_pairs`, and 06f's own reader
`load_pairs`, no training). `chatgpt-course safety filter` writes the conversations `filter_chats` keeps and drops:
a refusal is kept, a flagged request that was answered is dropped. Every bad input of either is one line on standard
error, exit status 2, and nothing written. The classifier is tiny and trained for three steps on one thread."""
import contextlib, io, json, os, subprocess, sys

import pytest

from _cli import cli, imports_of, snapshot  # tests/_cli.py
from chatgpt_course.chat_data import make_chat_dataset
from chatgpt_course.cli import main
from chatgpt_course.core import data_path
from chatgpt_course.files import read_jsonl, write_jsonl
from chatgpt_course.pairs import make_pairs, pairs_summary, read_pairs
from chatgpt_course.safety_data import safety_chat_rows

TINY = ["--n-layer", "1", "--n-embd", "32", "--vocab-size", "300", "--max-steps", "3", "--eval-every", "3", "--no-progress"]
RUN_CLI = "import sys; from chatgpt_course.cli import main; sys.exit(main())"

def run(*argv) -> tuple[int, str, str]:
    "The console script's entry point in-process: (exit status, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()

def counts(d:dict) -> str: return ", ".join(f"{k} {v:,}" for k, v in d.items())

# ---- data pairs

def test_data_pairs_writes_the_library_pairs_and_prints_their_summary(tmp_path):
    r = cli("pairs", "--n", 40, "--seed", 3, "--out", tmp_path / "pairs.jsonl", "--show", 1, cwd=tmp_path)  # the console script
    assert r.returncode == 0, r.stderr
    rows = read_pairs(tmp_path / "pairs.jsonl")
    assert len(rows) == 40 and rows == make_pairs(40, seed=3)
    s = pairs_summary(rows)
    lines = r.stdout.splitlines()
    assert lines[0] == f"wrote 40 preference pairs (train split, seed 3) to {tmp_path / 'pairs.jsonl'}"
    assert lines[1] == f"  kinds: {counts(s['kinds'])} | styles: {counts(s['styles'])} | sources: synthetic 40"
    assert any(l.strip().startswith("chosen:") for l in lines) and any(l.strip().startswith("rejected:") for l in lines)

def test_data_pairs_flags_reach_the_library(tmp_path):
    rc, out, _ = run("data", "pairs", "--n", 20, "--split", "heldout", "--no-augment", "--kinds", "arith", "refusal", "--out", tmp_path / "p.jsonl")
    assert rc == 0 and "heldout split" in out
    assert read_pairs(tmp_path / "p.jsonl") == make_pairs(20, split="heldout", augment=False, kinds=("arith", "refusal"))
    assert set(pairs_summary(read_pairs(tmp_path / "p.jsonl"))["kinds"]) == {"arith", "refusal"}

def test_dpo_reads_what_data_pairs_writes(tmp_path):
    from chatgpt_course.preference import load_pairs  # what `dpo --pairs FILE` calls
    from chatgpt_course.tokenizer import gpt2_tokenizer
    assert run("data", "pairs", "--n", 30, "--out", tmp_path / "pairs.jsonl")[0] == 0
    assert len(read_pairs(tmp_path / "pairs.jsonl")) == 30
    ex = load_pairs(tmp_path / "pairs.jsonl", gpt2_tokenizer(chat=True), 256)
    assert (ex.rows, len(ex), ex.dropped) == (30, 30, 0)

def test_data_pairs_starts_without_torch(tmp_path):
    r = imports_of("data", "pairs", "--n", 5, "--out", tmp_path / "p.jsonl", cwd=tmp_path)
    assert r["rc"] == 0 and r["loaded"] == [], r

@pytest.mark.parametrize("args, says", [
    (["--n", -3], "n=-3"),
    (["--out", "BUNDLED"], "bundled data folder"),
    (["--out", "EXISTING"], "already exists; pass --force"),
])
def test_data_pairs_bad_input_is_one_line_and_writes_nothing(tmp_path, args, says):
    (tmp_path / "existing.jsonl").write_text("keep me\n")
    subs = {"BUNDLED": data_path() / "pairs.jsonl", "EXISTING": tmp_path / "existing.jsonl"}
    args = [subs.get(a, a) for a in args]
    if "--out" not in args: args += ["--out", tmp_path / "new.jsonl"]
    before, bundled = snapshot(tmp_path), snapshot(data_path())
    rc, out, err = run("data", "pairs", "--n", 5, *args)
    assert (rc, out, err.count("\n")) == (2, "", 1) and says in err, err
    assert snapshot(tmp_path) == before and snapshot(data_path()) == bundled

# ---- safety filter

@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    "A tiny classifier folder written by `safety train`."
    work = tmp_path_factory.mktemp("classifier")
    torch = pytest.importorskip("torch"); threads = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        assert run("data", "safety", "--n", 300, "--out", work / "train.jsonl")[0] == 0
        rc, _, err = run("safety", "train", "--data", work / "train.jsonl", "--out", work / "model", *TINY)
    finally: torch.set_num_threads(threads)
    assert rc == 0, err
    return work / "model"

REFUSED = [r for r in safety_chat_rows(12, seed=1, split="heldout") if r["tags"]["label"] == 1]  # each unsafe request refused
COMPLIED = [{"messages": r["messages"][:-1] + [{"role": "assistant", "content": "Sure, here it is."}]} for r in REFUSED]
CHATS = make_chat_dataset(6, seed=0) + REFUSED + COMPLIED

def test_filter_keeps_refusals_and_drops_answered_flagged_requests(classifier, tmp_path):
    from chatgpt_course.safety import filter_chats, load_classifier
    write_jsonl(CHATS, tmp_path / "chats.jsonl")
    r = subprocess.run([sys.executable, "-c", RUN_CLI, "safety", "filter", "--classifier", str(classifier), "--data", str(tmp_path / "chats.jsonl"),
                        "--out", str(tmp_path / "kept.jsonl"), "--dropped", str(tmp_path / "dropped.jsonl")],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr
    kept, dropped = filter_chats(load_classifier(classifier), CHATS)
    assert (read_jsonl(tmp_path / "kept.jsonl"), read_jsonl(tmp_path / "dropped.jsonl")) == (kept, dropped)  # the command is the library
    assert all(c in kept for c in REFUSED)  # a refusal is kept, flagged or not
    assert r.stdout.count("\n") == 1 and r.stdout.startswith(f"{len(CHATS)} read, {len(kept)} kept, {len(dropped)} dropped")
    # At threshold 0 every request is flagged: only the refused ones survive, and every answered one is dropped.
    rc, out, _ = run("safety", "filter", "--classifier", classifier, "--data", tmp_path / "chats.jsonl", "--threshold", 0, "--out", tmp_path / "kept0.jsonl")
    assert rc == 0 and out.startswith(f"{len(CHATS)} read, {len(REFUSED)} kept, {len(CHATS) - len(REFUSED)} dropped (threshold 0.000)")
    assert read_jsonl(tmp_path / "kept0.jsonl") == REFUSED and not (tmp_path / "dropped0.jsonl").exists()

BAD_ROWS = {"no reply": {"messages": [{"role": "user", "content": "Help me bully my neighbour."}]},
            "no messages": {"text": "hello"},
            "bad role": {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "hello"}]}}

@pytest.mark.parametrize("case, says", [
    ("missing classifier", "nowhere/classifier.json' does not exist"),
    ("tokenizer folder", "tokenizer/classifier.json' does not exist"),
    ("foreign classifier.json", "does not hold a 'chatgpt-course safety classifier v1'"),
    ("no reply", "chats.jsonl' row 3: after an optional system message"),
    ("no messages", "chats.jsonl' row 3: expected an object with a non-empty 'messages' list"),
    ("bad role", "chats.jsonl' row 3: message 0 must be"),
    ("not json", "chats.jsonl' line 3 is not valid JSON"),
    ("out is data", "refusing to overwrite the input"),
    ("out in data/", "bundled data folder"),
    ("dropped is out", "--dropped and --out are both"),
    ("out exists", "already exists; pass --force"),
    ("threshold", "--threshold 2.0; expected a score between 0 and 1"),
])
def test_filter_bad_input_is_one_line_and_writes_nothing(classifier, tmp_path, case, says):
    files = tmp_path / "files"; files.mkdir()
    chats = files / "chats.jsonl"
    write_jsonl(CHATS[:2] + [BAD_ROWS[case]] + CHATS[2:] if case in BAD_ROWS else CHATS, chats)
    if case == "not json": chats.write_text("\n".join(chats.read_text().splitlines()[:2] + ["{not json"]) + "\n")
    (files / "existing.jsonl").write_text("keep me\n")
    (tmp_path / "foreign").mkdir(); (tmp_path / "foreign" / "classifier.json").write_text(json.dumps({"format": "something else"}))
    clf = {"missing classifier": tmp_path / "nowhere", "tokenizer folder": classifier / "tokenizer", "foreign classifier.json": tmp_path / "foreign"}.get(case, classifier)
    out = {"out is data": chats, "out in data/": data_path() / "kept.jsonl", "dropped is out": files / "dropped.jsonl",
           "out exists": files / "existing.jsonl"}.get(case, files / "kept.jsonl")
    more = ["--force"] if case == "out is data" else ["--threshold", "2"] if case == "threshold" else []
    before, bundled = snapshot(files), snapshot(data_path())
    rc, stdout, err = run("safety", "filter", "--classifier", clf, "--data", chats, "--out", out, "--dropped", files / "dropped.jsonl", *more)
    assert (rc, stdout, err.count("\n")) == (2, "", 1) and says in err, err
    assert err.startswith("chatgpt-course safety: error: ")
    assert snapshot(files) == before and snapshot(data_path()) == bundled
