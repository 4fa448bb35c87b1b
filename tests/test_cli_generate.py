"""The `sample` and `chat` commands (chatgpt_course.cli_generate) run as a user runs them, in other processes.

Covers: the interactive chat loop fed through a pipe (two turns, `/reset`, end of input) prints the replies the
engine gives to the same conversations and exits 0; Ctrl-D typed at a terminal (a pseudo-terminal) quits with exit
0; `chat --prompt` prints only the reply; `sample --stream` writes, byte for byte, what `sample` prints with the same
seed; each bad input of the generation issue exits 2 with one line on stderr; `--help` answers without importing
PyTorch. The checkpoints are tiny random GPTs in a temporary folder; nothing is timed.

Until the dispatcher's COMMANDS table names cli_generate for `sample` and `chat`, the commands run through RUNNER,
which does what the dispatcher does (a CourseError becomes one line on stderr and exit status 2); once it does,
RUNNER hands over to the dispatcher itself.
"""
import os, pty, subprocess, sys
from dataclasses import asdict

import pytest
import torch

from chatgpt_course.checkpoint import load_trained, save_checkpoint
from chatgpt_course.cli_generate import SEPARATOR
from chatgpt_course.core import seed_everything
from chatgpt_course.engine import Engine, SamplingParams
from chatgpt_course.model import GPT, GPTConfig
from chatgpt_course.tokenizer import load_tokenizer

RUNNER = """import sys
from chatgpt_course.cli import COMMANDS, main
if all(COMMANDS.get(c, ("",))[0] == "chatgpt_course.cli_generate" for c in ("sample", "chat")): sys.exit(main())
from chatgpt_course.core import CourseError
from chatgpt_course.cli_generate import cli_chat, cli_sample
cmd, argv = sys.argv[1], sys.argv[2:]
try: sys.exit({"sample": cli_sample, "chat": cli_chat}[cmd](argv, prog=f"chatgpt-course {cmd}"))
except CourseError as e:
    print(f"chatgpt-course {cmd}: error: {e}", file=sys.stderr); sys.exit(2)
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SAMPLING = ["--device", "cpu", "--max-new-tokens", "12", "--seed", "7"]
PARAMS = SamplingParams(max_new_tokens=12, temperature=0.8, seed=7)  # what SAMPLING asks for (0.8: the command's default)


def cli(*args, **kw) -> subprocess.CompletedProcess:
    "Run `chatgpt-course ARGS` (sample or chat) in a fresh Python process."
    return subprocess.run([sys.executable, "-c", RUNNER, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300, **kw)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    "Run directories of two tiny random GPTs: 'chat' (gpt2-chat tokenizer, with the chat tokens) and 'char' (without)."
    root, out = tmp_path_factory.mktemp("ckpts"), {}
    for name, spec in (("chat", "gpt2-chat"), ("char", "char")):
        cfg = GPTConfig(block_size=64, vocab_size=load_tokenizer(spec).n_vocab, n_layer=1, n_head=2, n_embd=16)
        seed_everything(0)
        save_checkpoint(root / name, 0, GPT(cfg), meta={"config": {"model": asdict(cfg)}, "tokenizer": spec})
        out[name] = str(root / name)
    return out


@pytest.fixture(scope="module")
def engine(ckpts):
    "The chat checkpoint's engine in this process, on one thread as the commands run: the expected replies."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tok, _ = load_trained(ckpts["chat"], "cpu")
    yield Engine(model, tok)
    torch.set_num_threads(threads)


def test_interactive_chat_two_turns_reset_and_end_of_input(ckpts, engine):
    r = cli("chat", "--checkpoint", ckpts["chat"], *SAMPLING, input="Hello!\nAnd you?\n/reset\nHello!\n")
    assert r.returncode == 0, r.stderr
    hello = [{"role": "user", "content": "Hello!"}]
    r1 = engine.chat(hello, PARAMS)
    r2 = engine.chat(hello + [{"role": "assistant", "content": r1}, {"role": "user", "content": "And you?"}], PARAMS)
    assert r1 != r2  # the second turn saw the first
    assert r.stdout == f"{r1}\n{r2}\n{r1}\n"  # after /reset the first message alone again: the first reply again
    assert "(a new conversation)" in r.stderr


def test_ctrl_d_at_a_terminal_quits_with_status_0(ckpts, engine):
    master, slave = pty.openpty()  # stdin is a terminal; Ctrl-D at the start of a line is the end of input there
    try:
        proc = subprocess.Popen([sys.executable, "-c", RUNNER, "chat", "--checkpoint", ckpts["chat"], *SAMPLING],
                                stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        os.write(master, b"Hello!\n\x04")
        out, err = proc.communicate(timeout=300)
    finally:
        os.close(master); os.close(slave)
    assert proc.returncode == 0, err
    assert out == engine.chat([{"role": "user", "content": "Hello!"}], PARAMS) + "\n"
    assert "Ctrl-D quits" in err  # the note a person at a terminal gets


def test_chat_prompt_prints_only_the_reply(ckpts, engine):
    r = cli("chat", "--checkpoint", ckpts["chat"], *SAMPLING, "--system", "You are terse.", "--prompt", "Hello!")
    assert r.returncode == 0, r.stderr
    conversation = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello!"}]
    assert r.stdout == engine.chat(conversation, PARAMS) + "\n"


def test_sample_stream_writes_what_sample_prints(ckpts):
    flags = ["sample", "--checkpoint", ckpts["char"], "--prompt", "ROMEO:", "--device", "cpu", "--max-new-tokens", "40",
             "--seed", "3", "--n", "2", "--stop", "zz"]
    printed, streamed = cli(*flags), cli(*flags, "--stream")
    assert printed.returncode == streamed.returncode == 0, (printed.stderr, streamed.stderr)
    assert streamed.stdout == printed.stdout
    first, second = printed.stdout.split(SEPARATOR)
    assert first.startswith("ROMEO:") and second.startswith("ROMEO:") and first != second
    assert "zz" not in printed.stdout
    assert printed.stderr.count("finish_reason=") == streamed.stderr.count("finish_reason=") == 2


BAD = [  # (command, checkpoint, flags, what the one line must say)
    ("sample", "char", ["--temperature", "-1"], "--temperature must be a number >= 0"),
    ("sample", "char", ["--top-p", "0"], "--top-p must be in (0, 1]"),
    ("sample", "char", ["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    ("sample", "char", ["--top-k", "0"], "--top-k must be None or an integer >= 1"),
    ("sample", "char", ["--n", "0"], "--n must be an integer >= 1"),
    ("sample", "char", ["--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1"),
    ("sample", "char", ["--max-new-tokens", "65"], "max_new_tokens 65 is beyond the model's context of 64"),
    ("sample", "char", ["--stop", ""], "stop strings must be non-empty"),
    ("sample", "char", ["--prompt", ""], "--prompt is empty"),
    ("chat", "chat", ["--prompt", ""], "--prompt is empty"),
    ("chat", "chat", ["--prompt", "hi", "--top-p", "2"], "--top-p must be in (0, 1]"),
    ("chat", "char", ["--prompt", "hi"], "lacks the chat tokens <|system|>"),
]

@pytest.mark.parametrize("cmd,ckpt,flags,message", BAD, ids=[f"{c}-{k} {' '.join(f)}" for c, k, f, _ in BAD])
def test_bad_input_exits_2_with_one_line(ckpts, cmd, ckpt, flags, message, monkeypatch, capsys):
    "RUNNER in this process (a fresh process per case would only add start-up time): exit status 2, one line on stderr."
    monkeypatch.setattr(sys, "argv", ["-c", cmd, "--checkpoint", ckpts[ckpt], "--device", "cpu", *flags])
    with pytest.raises(SystemExit) as stop: exec(RUNNER, {"__name__": "__main__"})
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert err.count("\n") == 1 and message in err, err
    assert err.startswith(f"chatgpt-course {cmd}: error: ")


def test_chat_refuses_a_checkpoint_without_chat_tokens_in_a_process(ckpts):
    r = cli("chat", "--checkpoint", ckpts["char"], "--device", "cpu")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "uses tokenizer 'char', which lacks the chat tokens" in r.stderr, r.stderr


def test_help_does_not_import_torch():
    for fn in ("cli_sample", "cli_chat"):
        code = (f"import sys\nfrom chatgpt_course.cli_generate import {fn}\n"
                f"try: {fn}(['--help'])\nexcept SystemExit as e: print('exit', e.code, 'torch' in sys.modules)")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
        assert r.stdout.strip().endswith("exit 0 False"), (fn, r.stdout[-300:], r.stderr)
        assert "--temperature" in r.stdout
