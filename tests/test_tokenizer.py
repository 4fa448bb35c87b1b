"""Tokenizer stage: what notebook cells cannot do well.

- Property tests (hypothesis): decode(encode(s)) == s for arbitrary Unicode strings under the character tokenizer
  (strings from its alphabet: it raises on unknown characters), a trained BPE and GPT-2; the pure-Python encoder
  gives tiktoken's ids (GPT-2, and a trained tokenizer's tiktoken export) on arbitrary strings; decoding any prefix
  of the ids never raises (cut-off UTF-8 becomes U+FFFD); chat rendering never turns user text into special tokens.
- GPT-2 parity, offline for real: a fresh process whose sockets are blocked before anything is imported builds the
  GPT-2 tokenizer from the bundled data/gpt2.tiktoken and gives golden ids, and tiktoken's ids on the whole corpus.
- The command line end to end in subprocesses: train / encode / decode, the progress bar, and one-line errors
  (exit status 2) for bad input: a vocabulary too small, empty text, a truncated or edited tokenizer file, an id
  outside the vocabulary.
"""
import json, subprocess, sys

import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from chatgpt_course.core import CourseError, data_path
from chatgpt_course.tokenizer import (EOT, SPECIAL_TOKENS, BPETokenizer, CharTokenizer, gpt2_encoding, gpt2_tokenizer,
                                      load_tokenizer, render_chat)

CORPUS = data_path("tinyshakespeare.txt").read_text("utf-8")
N_TRAIN = int(0.9 * len(CORPUS))
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS[:200_000], 1024)

@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()

@pytest.fixture(scope="module")
def char_tok():
    return CharTokenizer.train(CORPUS[:N_TRAIN])

# Text that exercises merges and the pattern: Shakespeare's words, whitespace runs, digits, contractions,
# special-token strings and non-ASCII characters, glued in random order; plus fully arbitrary Unicode.
WORDS = sorted(set(CORPUS[:20_000].split()))[:400]
PIECES = WORDS + [" ", "  ", "\n", "\r\n", "\t", "'s", "'t", "'ll", "123", "4.5", "é", "e\u0301", "世界", "👋", "👨‍👩‍👧",
                  EOT, "<|user|>", "<|assistant|>", "<|end|>", "<|", "|>"]
mixed_text = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)
any_text = st.one_of(st.text(max_size=80), mixed_text)


@PROPS
@given(s=st.data())
def test_char_roundtrip(char_tok, s):
    text = s.draw(st.text(alphabet=char_tok.chars, max_size=200))
    assert char_tok.decode(char_tok.encode(text)) == text

def test_char_unknown_character_is_an_error(char_tok):
    with pytest.raises(CourseError, match=r"'é' \(U\+00E9\) at position 3"):
        char_tok.encode("caf\u00e9")

@PROPS
@given(text=any_text)
def test_bpe_roundtrip_and_tiktoken_export(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert bpe.to_tiktoken().encode_ordinary(text) == ids
    assert not set(ids) & set(bpe.special_tokens.values())  # special-token strings are plain text by default

@PROPS
@given(text=any_text)
def test_gpt2_roundtrip_and_parity(gpt2, text):
    ids = gpt2.encode(text)
    assert ids == gpt2_encoding().encode_ordinary(text)
    assert gpt2.decode(ids) == text
    assert gpt2.encode(text, allowed_special="all") == gpt2_encoding().encode(text, allowed_special="all")

@PROPS
@given(text=st.text(min_size=1, max_size=40), cut=st.integers(min_value=0, max_value=200))
def test_decode_prefix_never_raises(gpt2, text, cut):
    ids = gpt2.encode(text)
    part = ids[: cut % (len(ids) + 1)]
    assert gpt2.decode(part) == gpt2.decode_bytes(part).decode("utf-8", errors="replace")

@PROPS
@given(user=any_text, reply=any_text)
def test_chat_user_text_never_becomes_special(bpe, user, reply):
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    ids, mask = render_chat(bpe, msgs)
    sp = bpe.special_tokens
    assert [i for i in ids if i in sp.values()] == [sp[EOT], sp["<|user|>"], sp["<|end|>"], sp["<|assistant|>"], sp["<|end|>"]]
    assert [i for i, m in zip(ids, mask) if m] == bpe.encode(reply) + [sp["<|end|>"]]
    assert bpe.decode(ids) == f"{EOT}<|user|>{user}<|end|><|assistant|>{reply}<|end|>"

# GPT-2's ids for a few strings (the first two as published for GPT-2; all as tiktoken's "gpt2" encoding gives them)
GPT2_GOLDEN = {"hello world": [31373, 995], "Hello, world!": [15496, 11, 995, 0],
               "To be, or not to be: that is the question.": [2514, 307, 11, 393, 407, 284, 307, 25, 326, 318, 262, 1808, 13],
               "naïve café, 世界 👋": [2616, 38776, 40304, 11, 220, 10310, 244, 45911, 234, 50169, 233],
               "don't  stop\n\n": [9099, 470, 220, 2245, 628]}

# Runs in a fresh process whose sockets are blocked before anything else is imported: the GPT-2 tokenizer must
# be built from the bundled data/gpt2.tiktoken alone, with an empty tiktoken cache, and give the golden ids.
OFFLINE_PARITY = r"""
import socket
def _refuse(*a, **k): raise OSError("network access is blocked in this test")
class _NoSocket(socket.socket):
    def __init__(self, *a, **k): _refuse()
socket.socket, socket.create_connection, socket.getaddrinfo = _NoSocket, _refuse, _refuse
import json, os, sys, tempfile
os.environ["TIKTOKEN_CACHE_DIR"] = tempfile.mkdtemp()  # an empty cache: nothing downloaded before can stand in
from chatgpt_course.core import data_path
from chatgpt_course.tokenizer import EOT, gpt2_encoding, gpt2_tokenizer
golden = json.loads(sys.argv[1])
tok, enc = gpt2_tokenizer(chat=True), gpt2_encoding()
for text, ids in golden.items():
    assert tok.encode(text) == ids == enc.encode_ordinary(text), (text, tok.encode(text))
    assert tok.decode(ids) == text, text
corpus = data_path("tinyshakespeare.txt").read_text("utf-8")
ids = tok.encode(corpus)
assert ids == enc.encode_ordinary(corpus) and tok.decode(ids) == corpus
assert tok.special_tokens == {EOT: 50256, "<|system|>": 50257, "<|user|>": 50258, "<|assistant|>": 50259, "<|end|>": 50260}
try: socket.create_connection(("example.org", 443), timeout=1)
except OSError: pass
else: sys.exit("the network was not blocked")
print(f"ok: {len(golden)} golden strings and the whole corpus ({len(ids):,} tokens) with no network")
"""

def test_gpt2_parity_offline(tmp_path):
    r = subprocess.run([sys.executable, "-c", OFFLINE_PARITY, json.dumps(GPT2_GOLDEN)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=600)
    assert r.returncode == 0 and r.stdout.startswith("ok: 5 golden strings"), (r.stdout, r.stderr)

def test_gpt2_golden_ids(gpt2):
    for text, ids in GPT2_GOLDEN.items(): assert gpt2.encode(text) == ids == gpt2_encoding().encode_ordinary(text), text

def test_trained_export_matches_on_validation_text(bpe):
    val = CORPUS[N_TRAIN:]
    assert bpe.encode_fast(val) == bpe.encode(val)


# ---- command line, end to end -------------------------------------------------------------------------------------

def cli(*args, input=None):
    cmd = [sys.executable, "-c", "import sys; from chatgpt_course.cli import main; sys.exit(main())", "tokenizer", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=300)

def test_cli_train_encode_decode(tmp_path):
    src = tmp_path / "input.txt"; src.write_text(CORPUS[:100_000], encoding="utf-8")
    out = tmp_path / "tok"
    r = cli("train", "--input", src, "--vocab-size", 600, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "BPE merges" in r.stderr and "600 tokens" in r.stdout  # progress bar on stderr, summary on stdout
    tok = load_tokenizer(out)
    assert tok.n_vocab == 600 and tok.special_tokens[EOT] == 600 - len(SPECIAL_TOKENS)
    text = "To be, or not to be: that is the question. 👋"
    r = cli("encode", "--tokenizer", out, text)
    assert r.returncode == 0, r.stderr
    ids = [int(x) for x in r.stdout.split()]
    assert ids == tok.encode(text)
    r = cli("decode", "--tokenizer", out, *ids)
    assert r.returncode == 0 and r.stdout == text + "\n"
    r = cli("encode", "--tokenizer", out, "--allow-special", input="hi<|endoftext|>")  # text from stdin
    assert [int(x) for x in r.stdout.split()][-1] == tok.eot_id

def test_cli_gpt2():
    r = cli("encode", "--tokenizer", "gpt2", "hello world")
    assert (r.returncode, r.stdout) == (0, "31373 995\n")

def test_cli_bad_input(tmp_path, capsys):
    """One subprocess shows the real exit status and one-line message; the other cases run in-process (same code path)."""
    from chatgpt_course.cli import main
    src = tmp_path / "input.txt"; src.write_text("some text to train on", encoding="utf-8")
    empty = tmp_path / "empty.txt"; empty.write_text("", encoding="utf-8")
    good = tmp_path / "good"
    BPETokenizer.train("some text to train on, some more", 270).save(good)
    raw = (good / "tokenizer.json").read_text()
    cut = tmp_path / "cut"; cut.mkdir(); (cut / "tokenizer.json").write_text(raw[: len(raw) // 2])
    edited = tmp_path / "edited"; edited.mkdir()
    payload = json.loads(raw); payload["merges"][0][0] = 101
    (edited / "tokenizer.json").write_text(json.dumps(payload))
    r = cli("encode", "--tokenizer", cut, "x")
    assert r.returncode == 2 and "truncated or corrupt" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    cases = [(("train", "--input", src, "--vocab-size", 200, "--out", tmp_path / "o"), "vocab_size 200 is too small"),
             (("train", "--input", empty, "--vocab-size", 300, "--out", tmp_path / "o"), "empty text"),
             (("train", "--input", tmp_path / "nope.txt", "--vocab-size", 300, "--out", tmp_path / "o"), "nope.txt"),
             (("encode", "--tokenizer", edited, "x"), "fails its checksum"),
             (("encode", "--tokenizer", tmp_path / "missing", "x"), "missing"),
             (("decode", "--tokenizer", good, 3, 270), "token id 270 at position 1"),
             (("decode", "--tokenizer", "gpt2", "abc"), "token id 'abc' is not an integer")]
    for args, message in cases:
        assert main(["tokenizer", *map(str, args)]) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert main(["tokenizer", "decode", "--tokenizer", "gpt2", "31373", "995"]) == 0
    assert capsys.readouterr().out == "hello world\n"
