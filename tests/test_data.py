"""Data stage: what notebook cells cannot do well.

- The command line end to end, in subprocesses through the `chatgpt-course` console script: the `clean` command
  that demo.sh runs (its output equals the library's, in a process with another hash seed), and each bad
  input (a missing file, a directory where a file is expected, an empty file, a binary file, non-UTF-8 bytes) giving
  exit status 2 and one line on stderr with no traceback; `--errors replace` as the documented alternative.
- Output guards: nothing is ever written under the bundled data/ folder (also through a symlink), the input is
  never overwritten, an existing output needs --force. (The `chat` subcommand: tests/test_chat_data.py.)
- `stats` on parquet and JSONL shards.
- Start-up: `chatgpt-course --help` and the `data` and `tokenizer` commands never import PyTorch (nor matplotlib
  unless asked to plot), checked in fresh processes; their times are printed, not asserted.
- Property tests (hypothesis): clean_text is idempotent and leaves no control characters; scrub_pii removes every
  generated e-mail address and phone number; split_train_val is a seeded partition. (De-duplication:
  tests/test_dedup.py.)
"""
import json, shutil, unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from chatgpt_course.cli import main
from chatgpt_course.core import data_path
from chatgpt_course.data import clean_corpus, clean_text, load_documents, scrub_pii, shakespeare_documents, split_train_val
from chatgpt_course.files import read_jsonl

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
from _cli import cli, imports_of, snapshot  # tests/_cli.py


# ---- the demo's commands, end to end ------------------------------------------------------------------------------

def test_cli_clean_as_in_demo(tmp_path):
    out = tmp_path / "demo"
    r = cli("clean", data_path("tinyshakespeare.txt"), out / "clean.txt", "--stats", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for step in ("normalise", "quality filter", "exact dedupe", "near dedupe", "scrub PII", "unique characters", "words"):
        assert step in r.stdout, step
    kept, report = clean_corpus(shakespeare_documents())
    assert load_documents(out / "clean.txt") == kept  # the command line is the library
    assert f"wrote {len(kept):,} documents" in r.stdout and str(report).splitlines()[1] in r.stdout


# ---- bad input: one line on stderr, exit status 2, nothing written ------------------------------------------------

def _bad_inputs(tmp: Path) -> dict:
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "binary.txt").write_bytes(b"GIF89a\x01\x00\x00\x00\xff")
    (tmp / "latin1.txt").write_bytes("naïve café\n".encode("latin-1"))
    (tmp / "good.txt").write_text("A perfectly good line of text.\n\nAnd another paragraph here.\n", encoding="utf-8")
    (tmp / "a-folder").mkdir()
    return {  # case: (arguments, the path named, the problem named)
        "missing": (("clean", tmp / "nope.txt", tmp / "out.txt"), tmp / "nope.txt", "does not exist"),
        "directory": (("clean", tmp / "good.txt", tmp / "a-folder"), tmp / "a-folder", "is a directory"),
        "empty": (("clean", tmp / "empty.txt", tmp / "out.txt"), tmp / "empty.txt", "is empty"),
        "binary": (("stats", tmp / "binary.txt"), tmp / "binary.txt", "NUL byte"),
        "non-utf8": (("clean", tmp / "latin1.txt", tmp / "out.txt"), tmp / "latin1.txt", "is not valid UTF-8 (byte 0xef at offset 2)"),
    }

@pytest.mark.parametrize("case", ["missing", "directory", "empty", "binary", "non-utf8"])
def test_cli_bad_input_is_one_line(tmp_path, case):
    args, path, problem = _bad_inputs(tmp_path)[case]
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("chatgpt-course data: error: ") and str(path) in r.stderr and problem in r.stderr, r.stderr
    assert r.stdout == "" and not (tmp_path / "out.txt").exists()

def test_errors_replace_is_the_documented_alternative(tmp_path, capsys):
    _bad_inputs(tmp_path)
    assert main(["data", "clean", str(tmp_path / "latin1.txt"), str(tmp_path / "out.txt"), "--errors", "replace", "--min-words", "1"]) == 0
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "na\ufffdve caf\ufffd\n"
    assert main(["data", "stats", str(tmp_path / "binary.txt"), "--errors", "replace"]) == 2  # binary stays an error
    assert "NUL byte" in capsys.readouterr().err


# ---- output guards ---------------------------------------------------------------------------------------------------

def test_cli_never_writes_under_data(tmp_path, capsys):
    bundled = data_path()
    before = snapshot(bundled)
    link = tmp_path / "link-to-data"; link.symlink_to(bundled, target_is_directory=True)
    r = cli("clean", bundled / "tinyshakespeare.txt", bundled / "clean.txt", cwd=tmp_path)  # end to end once
    assert r.returncode == 2 and "bundled data folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    attempts = [["clean", str(bundled / "tinyshakespeare.txt"), str(bundled / "clean.txt")],
                ["clean", str(bundled / "tinyshakespeare.txt"), str(bundled / "tinyshakespeare.txt"), "--force"],
                ["clean", str(bundled / "tinyshakespeare.txt"), str(link / "clean.txt"), "--force"],  # through a symlink
                ["clean", str(bundled / "tinyshakespeare.txt"), str(bundled / "sub" / "clean.txt")],
                ["stats", str(bundled / "tinyshakespeare.txt"), "--plot", str(bundled / "plot.png")]]
    for argv in attempts:
        assert main(["data", *argv]) == 2, argv
        assert "bundled data folder" in capsys.readouterr().err, argv
    assert snapshot(bundled) == before and not (bundled / "sub").exists()

def test_cli_refuses_to_overwrite(tmp_path, capsys):
    src = tmp_path / "in.txt"; src.write_text("To be, or not to be, that is the question.\n", encoding="utf-8")
    assert main(["data", "clean", str(src), str(src)]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err
    assert main(["data", "clean", str(src), str(src), "--force"]) == 2  # --force never overwrites the input
    assert src.read_text(encoding="utf-8") == "To be, or not to be, that is the question.\n"
    folder = tmp_path / "corpus"; folder.mkdir(); (folder / "a.txt").write_text("one two three four\n")
    assert main(["data", "clean", str(folder), str(folder / "clean.txt")]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    out = tmp_path / "out.txt"; out.write_text("precious\n")
    assert main(["data", "clean", str(src), str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err and out.read_text() == "precious\n"
    assert main(["data", "clean", str(src), str(out), "--force"]) == 0
    assert out.read_text() == "To be, or not to be, that is the question.\n"


# ---- shards ------------------------------------------------------------------------------------------------------------

def test_stats_on_shards(tmp_path, capsys):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    docs = shakespeare_documents()[:300]
    (tmp_path / "shards").mkdir()
    pq.write_table(pa.table({"text": docs[:200]}), tmp_path / "shards" / "0.parquet", row_group_size=50)
    (tmp_path / "shards" / "1.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[200:]), encoding="utf-8")
    assert main(["data", "stats", str(tmp_path / "shards")]) == 0
    out = capsys.readouterr().out
    assert "documents" in out and " 300\n" in out and f"{sum(map(len, docs)):,}" in out
    assert main(["data", "stats", str(tmp_path / "shards"), "--text-field", "body"]) == 2
    assert "no 'body' column" in capsys.readouterr().err


# ---- properties --------------------------------------------------------------------------------------------------------

@PROPS
@given(text=st.text(max_size=300))
def test_clean_text_idempotent_and_clean(text):
    for form in ("NFC", "NFKC"):
        c = clean_text(text, form)
        assert clean_text(c, form) == c
        assert unicodedata.is_normalized(form, c)
        assert not any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in c)
        assert "\t" not in c and "\r" not in c and c == c.strip() and "\n\n\n" not in c

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
emails = st.builds(lambda u, d, t: f"{u}@{d}.{t}", names, names, st.sampled_from(["com", "org", "co.uk", "io"]))
phones = st.builds(lambda a, b, c: f"+44 {a} {b} {c}", st.integers(10, 99), st.integers(1000, 9999), st.integers(1000, 9999))
filler = st.text(alphabet="abcdefghij ,.;!?\n", max_size=30)

@PROPS
@given(parts=st.lists(st.tuples(filler, st.one_of(emails, phones)), min_size=1, max_size=5), tail=filler)
def test_scrub_pii_removes_generated_pii(parts, tail):
    text = "".join(f + " " + p + " " for f, p in parts) + tail
    out = scrub_pii(text)
    assert all(p not in out for _, p in parts)
    assert out.count("[EMAIL]") + out.count("[PHONE]") == len(parts)
    assert scrub_pii(out) == out

@PROPS
@given(n=st.integers(0, 200), frac=st.floats(0, 0.9), seed=st.integers(0, 2**32 - 1))
def test_split_is_a_seeded_partition(n, frac, seed):
    docs = [f"doc {i}" for i in range(n)]
    tr, va = split_train_val(docs, frac, seed)
    assert (tr, va) == split_train_val(docs, frac, seed)
    assert sorted(tr + va) == sorted(docs) and not set(tr) & set(va)
    assert tr == [d for d in docs if d in set(tr)]  # order kept
    if n >= 2 and frac > 0: assert tr and va

# ---- the other subcommands and output formats ------------------------------------------------------------------------

def test_verify_and_jsonl_output(tmp_path, capsys):
    assert main(["data", "verify"]) == 0 and capsys.readouterr().out.count("  ok  ") == 3
    copy = tmp_path / "bundled"; shutil.copytree(data_path(), copy)
    (copy / "tinyshakespeare.txt").chmod(0o644)
    with open(copy / "tinyshakespeare.txt", "ab") as f: f.write(b"\n")
    assert main(["data", "verify", "--folder", str(copy)]) == 2
    assert "tinyshakespeare.txt" in capsys.readouterr().err
    src = tmp_path / "in.txt"
    src.write_text("The first document has enough words.\n\nThe first document has enough words.\n\nA second one, also long enough.\n")
    assert main(["data", "clean", str(src), str(tmp_path / "out.jsonl")]) == 0
    assert read_jsonl(tmp_path / "out.jsonl") == [{"text": "The first document has enough words."}, {"text": "A second one, also long enough."}]


# ---- start-up: no PyTorch on the data and tokenizer paths ---------------------------------------------------------------

def test_commands_start_without_torch(tmp_path):
    (tmp_path / "in.txt").write_text("To be, or not to be, that is the question.\n\nWhether 'tis nobler in the mind to suffer.\n")
    runs = [["--help"], ["data", "--help"], ["data", "clean", tmp_path / "in.txt", tmp_path / "out.txt"],
            ["data", "stats", tmp_path / "in.txt"], ["data", "chat", "--n", 3, "--out", tmp_path / "chat.jsonl"], ["data", "verify"],
            ["tokenizer", "--help"], ["tokenizer", "train", "--input", tmp_path / "in.txt", "--vocab-size", 270, "--out", tmp_path / "tok"],
            ["tokenizer", "encode", "--tokenizer", "gpt2", "hello world"], ["tokenizer", "decode", "--tokenizer", "gpt2", 31373, 995]]
    for argv in runs:
        r = imports_of(*argv, cwd=tmp_path)
        print(f"chatgpt-course {' '.join(map(str, argv))}: exit {r['rc']}, {r['seconds']:.2f} s, loaded {r['loaded'] or 'neither'}")
        assert r["rc"] == 0 and r["loaded"] == [], (argv, r)
