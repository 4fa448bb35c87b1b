"""Chat data stage: what notebook cells cannot do well.

- `chatgpt-course data chat` end to end, in subprocesses through the console script: the command demo.sh runs
  writes the same rows as the library, in a process with another hash seed; `--help` lists the chat options
  under the data command.
- Output guards for `chat`: nothing is ever written under the bundled data/ folder (also through a symlink or
  into a new subfolder), an existing output needs --force.
- Property test (hypothesis): the generator is deterministic and its held-out split never shares a user question
  or item with training, whatever the seed.
- Layers: `chat_data` imports nothing of the course but `core`, and `data` does not import `chat_data` (no cycle).
"""
import subprocess, sys

from hypothesis import given, settings, strategies as st

from chatgpt_course.cli import main
from chatgpt_course.core import data_path
from chatgpt_course.chat_data import PERSONA, make_chat_dataset
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
    for flag in ("--n", "--out", "--seed", "--split", "--show", "--max-turns", "--no-augment", "--force"):
        assert flag in r.stdout, flag


# ---- output guards ---------------------------------------------------------------------------------------------------

def test_cli_chat_never_writes_under_data(tmp_path, capsys):
    bundled = data_path()
    before = snapshot(bundled)
    link = tmp_path / "link-to-data"; link.symlink_to(bundled, target_is_directory=True)
    r = cli("chat", "--n", 3, "--out", bundled / "chat.jsonl", cwd=tmp_path)  # end to end once
    assert r.returncode == 2 and "bundled data folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    attempts = [["chat", "--n", "3", "--out", str(link / "chat.jsonl"), "--force"],  # through a symlink
                ["chat", "--n", "3", "--out", str(bundled / "sub" / "chat.jsonl")]]
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

@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_chat_heldout_never_leaks(seed):
    train, held = make_chat_dataset(300, seed=seed), make_chat_dataset(150, seed=seed, split="heldout")
    assert make_chat_dataset(300, seed=seed) == train
    users = lambda rows: {m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}
    items = lambda rows: {i for r in rows for i in r["tags"]["items"] if not i.startswith("persona:")}
    assert not users(train) & users(held)
    assert not items(train) & items(held)
    assert {i.split(":")[1] for r in held for i in r["tags"]["items"] if i.startswith("persona:")} <= set(PERSONA)


# ---- layers ---------------------------------------------------------------------------------------------------------

def test_chat_data_and_data_stand_apart():
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('chatgpt_course.'))))")
    loaded = {m: subprocess.run([sys.executable, "-c", code, m], capture_output=True, text=True, check=True, timeout=120).stdout.split()
              for m in ("chatgpt_course.chat_data", "chatgpt_course.data")}
    assert loaded["chatgpt_course.chat_data"] == ["chatgpt_course.chat_data", "chatgpt_course.core"]
    assert "chatgpt_course.chat_data" not in loaded["chatgpt_course.data"]
