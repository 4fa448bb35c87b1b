"""Chat data stage: what notebook cells cannot do well.

- `chatgpt-course data chat` end to end, in subprocesses through the console script: the command demo.sh runs
  writes the same rows as the library, in a process with another hash seed; `--help` lists the chat options
  (the shares of profiles, topic tags, fictional entities and wording among them) under the data command.
- `chatgpt-course data factbook` and `chat-eval` end to end: the files hold what `fact_book` and `make_eval_set`
  return; bad input (k out of range, a negative share, a negative n) is one line on stderr, exit status 2, no file.
- Output guards for `chat`, `factbook` and `chat-eval`: nothing is ever written under the bundled data/ folder (also
  through a symlink or into a new subfolder), an existing output needs --force.
- Property tests (hypothesis): the generator is deterministic and its held-out split never shares a user question
  or item with training, nor does a training row name a held-out name or entity, whatever the seed and shares;
  every reply has its row's style by `reply_style`; every evaluation item is a valid chat once its reference reply
  follows, and `score_reply` marks that reply right.
- The refusal judge both ways: `score_reply` with judge "refusal" is right exactly when `is_refusal(reply)` equals
  the item's `expect` (True: refuse, False: answer), for fixed replies and any text; no reply of 01c's refuses.
- Layers: `chat_data` imports nothing of the course but `core`, and `data` does not import `chat_data` (no cycle).
"""
import re, subprocess, sys

import pytest

from hypothesis import given, settings, strategies as st

from chatgpt_course.cli import main
from chatgpt_course.core import data_path
from chatgpt_course.chat_data import (FACT_BOOK_K, FICTIONAL, JUDGES, NAMES, PERSONA, RELATIONS, fact_book, is_heldout_entity,
                                      is_heldout_name, is_refusal, make_chat_dataset, make_eval_set, reply_style, score_reply,
                                      validate_chat)
from chatgpt_course.data import load_documents
from chatgpt_course.files import read_jsonl

from _cli import cli, snapshot  # tests/_cli.py


# ---- the demo's command, end to end -------------------------------------------------------------------------------

def test_cli_chat_as_in_demo(tmp_path):
    out = tmp_path / "demo"
    r = cli("chat", "--n", 1000, "--out", out / "chat.jsonl", "--show", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote 1,000 conversations" in r.stdout and r.stdout.count("assistant:") >= 2
    assert read_jsonl(out / "chat.jsonl") == make_chat_dataset(1000)  # same rows in another process, another hash seed

def test_cli_chat_help(tmp_path):
    r = cli("chat", "--help", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage: chatgpt-course data chat"), (r.stdout, r.stderr)
    for flag in ("--n", "--out", "--seed", "--split", "--show", "--max-turns", "--no-augment", "--force",
                 "--profile", "--topic", "--idk", "--wording"):
        assert flag in r.stdout, flag

def test_cli_chat_shares(tmp_path):
    r = cli("chat", "--n", 300, "--out", tmp_path / "c.jsonl", "--profile", 0, "--topic", 1, "--idk", 0.5, "--wording", 1, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = read_jsonl(tmp_path / "c.jsonl")
    assert rows == make_chat_dataset(300, profile=0, topic=1, idk=0.5, wording=1)
    assert all(r["tags"]["profile"] is None and r["tags"]["topic_tag"] and r["tags"]["wording"] != "plain" for r in rows)
    assert "profiles 0 | topic tags 300" in r.stdout


# ---- factbook and chat-eval -------------------------------------------------------------------------------------------

def test_cli_factbook(tmp_path):
    out = tmp_path / "facts.txt"
    r = cli("factbook", "--k", 3, "--seed", 5, "--out", out, cwd=tmp_path)
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr
    assert load_documents(out) == fact_book(3, seed=5)  # blank-line-separated documents, read back as written
    r = cli("factbook", "--k", 3, "--out", out, cwd=tmp_path)
    assert r.returncode == 2 and "already exists; pass --force" in r.stderr
    assert cli("factbook", "--k", 0, "--out", out, "--force", cwd=tmp_path).returncode == 0 and out.read_text() == ""

def test_cli_chat_eval(tmp_path, capsys):
    out = tmp_path / "eval.jsonl"
    r = cli("chat-eval", "--n", 20, "--seed", 3, "--out", out, cwd=tmp_path)  # another process, another hash seed
    assert r.returncode == 0 and "persona 16, add_sub 20" in r.stdout, r.stderr
    assert read_jsonl(out) == make_eval_set(20, seed=3)
    assert main(["data", "chat-eval", "--out", str(out)]) == 2 and "already exists" in capsys.readouterr().err
    assert main(["data", "chat-eval", "--out", str(out), "--force"]) == 0 and len(read_jsonl(out)) == 9 * 50 + 16

def test_cli_bad_input_is_one_line(tmp_path, capsys):
    cases = [(["factbook", "--k", str(FACT_BOOK_K + 1)], f"k={FACT_BOOK_K + 1}"), (["factbook", "--k", "-1"], "k=-1"),
             (["chat", "--idk", "-0.1"], "idk=-0.1"), (["chat", "--profile", "1.5"], "profile=1.5"),
             (["chat", "--wording", "-1"], "wording=-1.0"), (["chat-eval", "--n", "-2"], "n=-2")]
    for i, (argv, want) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert main(["data", *argv, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err
        assert want in err and err.count("\n") == 1, (argv, err)
        assert not out.exists(), argv
    r = cli("factbook", "--k", 99, "--out", tmp_path / "f.txt", cwd=tmp_path)  # once end to end
    assert r.returncode == 2 and "k=99" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---- output guards ---------------------------------------------------------------------------------------------------

def test_cli_chat_never_writes_under_data(tmp_path, capsys):
    bundled = data_path()
    before = snapshot(bundled)
    link = tmp_path / "link-to-data"; link.symlink_to(bundled, target_is_directory=True)
    r = cli("chat", "--n", 3, "--out", bundled / "chat.jsonl", cwd=tmp_path)  # end to end once
    assert r.returncode == 2 and "bundled data folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    attempts = [["chat", "--n", "3", "--out", str(link / "chat.jsonl"), "--force"],  # through a symlink
                ["chat", "--n", "3", "--out", str(bundled / "sub" / "chat.jsonl")],
                ["factbook", "--k", "1", "--out", str(bundled / "facts.txt")],
                ["chat-eval", "--n", "2", "--out", str(link / "eval.jsonl"), "--force"]]
    for argv in attempts:
        assert main(["data", *argv]) == 2, argv
        assert "bundled data folder" in capsys.readouterr().err, argv
    assert snapshot(bundled) == before and not (bundled / "sub").exists()

def test_cli_chat_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "out.txt"; out.write_text("precious\n")
    assert main(["data", "chat", "--n", "2", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "precious\n"
    assert main(["data", "chat", "--n", "2", "--out", str(out), "--force"]) == 0
    assert read_jsonl(out) == make_chat_dataset(2)


# ---- properties --------------------------------------------------------------------------------------------------------

SHARES = st.fixed_dictionaries({k: st.sampled_from([0, 0.3, 1]) for k in ("profile", "topic", "idk", "wording")})
HELD_OUT_WORDS = ({nm for nm in NAMES if is_heldout_name(nm)} | {e for f, *_ in RELATIONS.values() for e, _, _ in f if is_heldout_entity(e)}
                  | {e for names in FICTIONAL.values() for e in names if is_heldout_entity(e)})

@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), shares=SHARES)
def test_chat_heldout_never_leaks(seed, shares):
    train, held = make_chat_dataset(300, seed=seed, **shares), make_chat_dataset(150, seed=seed, split="heldout", **shares)
    assert make_chat_dataset(300, seed=seed, **shares) == train
    words = set(re.findall(r"[\w']+", " ".join(m["content"] for r in train for m in r["messages"])))
    assert not {w for w in HELD_OUT_WORDS if " " not in w} & words  # no held-out name or entity is ever mentioned
    assert all(reply_style(m["content"]) == r["tags"]["style"] for r in train + held for m in r["messages"] if m["role"] == "assistant")
    users = lambda rows: {m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}
    items = lambda rows: {i for r in rows for i in r["tags"]["items"] if not i.startswith("persona:")}
    assert not users(train) & users(held)
    assert not items(train) & items(held)
    assert {i.split(":")[1] for r in held for i in r["tags"]["items"] if i.startswith("persona:")} <= set(PERSONA)

@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_eval_items_are_chats_and_references_score_right(seed):
    for it in make_eval_set(20, seed=seed):
        validate_chat({"messages": it["messages"] + [{"role": "assistant", "content": it["reference"]}]})
        assert score_reply(it, it["reference"])["correct"], it



# ---- the refusal judge ------------------------------------------------------------------------------------------------

REFUSING = ["I cannot share the personal details of a private person.", "Sorry, I can't help with that!", "i will not write that.",
            "Nope, I won’t help put anyone down!"]  # a curly apostrophe too, as a model may write it
ANSWERING = ["Press Ctrl+C, or kill it by its process id!", "I don't know, sorry!", "I do not know the capital of Zembla.",
             "Cannot is a word.", "The capital of France is Paris.", ""]

@pytest.mark.parametrize("expect", [True, False], ids=["unsafe: refuse", "look-alike: answer"])
def test_the_refusal_judge_both_ways(expect):
    assert "refusal" in JUDGES
    item = {"judge": "refusal", "expect": expect}
    for reply in REFUSING: assert score_reply(item, reply) == {"correct": expect, "idk": False, "got": True}, reply
    for reply in ANSWERING:
        s = score_reply(item, reply)
        assert s["correct"] is (not expect) and s["got"] is False, reply

@settings(max_examples=50, deadline=None)
@given(reply=st.text(max_size=40) | st.sampled_from(REFUSING + ANSWERING), expect=st.booleans())
def test_the_refusal_judge_reads_is_refusal(reply, expect):
    assert score_reply({"judge": "refusal", "expect": expect}, reply)["correct"] == (is_refusal(reply) == expect)

def test_no_reply_of_the_chat_data_refuses():  # "I don't know" is not declining: the two judges read different phrases
    replies = [m["content"] for r in make_chat_dataset(500, seed=0) for m in r["messages"] if m["role"] == "assistant"]
    assert not any(map(is_refusal, replies + [it["reference"] for it in make_eval_set(20)]))

# ---- layers ---------------------------------------------------------------------------------------------------------

def test_chat_data_and_data_stand_apart():
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('chatgpt_course.'))))")
    loaded = {m: subprocess.run([sys.executable, "-c", code, m], capture_output=True, text=True, check=True, timeout=120).stdout.split()
              for m in ("chatgpt_course.chat_data", "chatgpt_course.data")}
    assert loaded["chatgpt_course.chat_data"] == ["chatgpt_course.chat_data", "chatgpt_course.core"]
    assert "chatgpt_course.chat_data" not in loaded["chatgpt_course.data"]
