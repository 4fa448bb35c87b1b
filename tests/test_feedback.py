"""The feedback store (07d) and `chatgpt-course feedback` (10j) where cells cannot show it: two processes writing one
database at once lose nothing; a writer SIGKILLed inside a transaction leaves the file consistent and the transaction
absent; the export is byte-for-byte deterministic and independent of the order the answers came in; each kind of bad
input is one line and changes nothing; `feedback rate` driven through standard input records a choice, and `feedback
export` writes pairs that `pairs.read_pairs` accepts."""
import json, random, signal, sqlite3, subprocess, sys
from pathlib import Path

import pytest

from chatgpt_course.core import CourseError
from chatgpt_course.feedback import (SCHEMA_VERSION, add_choice, add_choices, add_rating, choices, export_pairs, export_summary,
                                     feedback_counts, open_feedback, write_feedback_pairs)
from chatgpt_course.pairs import read_pairs
from _cli import ENV, RUN_CLI, imports_of, tiny_chat_model

PROMPT = [{"role": "system", "content": "Answer formally."}, {"role": "user", "content": "What is the capital of Peru?"}]

WRITER = """import sys
from chatgpt_course.feedback import open_feedback, add_choice
path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = open_feedback(path)  # both writers may create and migrate the file at once
msgs = [{"role": "user", "content": "What is the capital of Peru?"}]
for i in range(n): add_choice(db, msgs, f"Lima {i}.", f"lima {i}!", "pip", "pip", "ab"[i % 2], comment=str(i), rater=name)
db.close()"""

def test_two_writing_processes_lose_no_records(tmp_path):
    path, n = tmp_path / "fb.db", 300
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{k}", str(n)], stderr=subprocess.PIPE, text=True) for k in range(2)]
    for p in procs: assert p.wait(timeout=120) == 0, p.stderr.read()
    db = open_feedback(path)
    got = {}
    for c in choices(db): got.setdefault(c["rater"], []).append(int(c["comment"]))
    assert {k: sorted(v) for k, v in got.items()} == {"w0": list(range(n)), "w1": list(range(n))}
    assert got["w0"] == list(range(n))  # each writer's records in the order it wrote them
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()

KILLED = """import sys, time
from chatgpt_course.feedback import open_feedback, add_choice, transaction
db = open_feedback(sys.argv[1]); msgs = [{"role": "user", "content": "Hi?"}]
for i in range(5): add_choice(db, msgs, f"Hello {i}.", f"hey {i}!", "pip", "pip", "a", rater="committed")
with transaction(db):
    for i in range(200):
        add_choice(db, msgs, f"Hello {i}.", f"hey {i}!", "pip", "pip", "b", rater="batch")
        if i == 100: print("inside", flush=True); time.sleep(60)"""

def test_a_writer_killed_inside_a_transaction_leaves_the_database_consistent(tmp_path):
    path = tmp_path / "fb.db"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(path)], stdout=subprocess.PIPE, text=True)
    try: assert proc.stdout.readline().strip() == "inside"
    finally: proc.kill(); proc.stdout.close(); proc.wait()
    assert proc.returncode == -signal.SIGKILL
    db = open_feedback(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [c["rater"] for c in choices(db)] == ["committed"] * 5  # no partial record, no part of the batch
    add_rating(db, PROMPT, "The capital of Peru is Lima.", "pip", 5)  # and the file takes writes again
    assert feedback_counts(db) == {"ratings": 1, "choices": 5}
    db.close()

def _votes(seed:int) -> list[dict]:
    "Choices with repeats, both orientations, ties, identical replies and even splits."
    rng, out = random.Random(seed), []
    for _ in range(200):
        q = rng.randrange(6); x, y = f"Reply {rng.randrange(3)} to {q}.", f"reply {rng.randrange(3)} to {q}!"
        a, b = (x, y) if rng.random() < 0.5 else (y, x)
        out.append(dict(messages=[{"role": "user", "content": f"Question {q}?"}], reply_a=a, reply_b=b, model_a="m1", model_b="m2",
                        winner=rng.choice(["a", "a", "b", "tie"])))
    out += [dict(messages=PROMPT, reply_a="Lima.", reply_b=" Lima. ", model_a="m1", model_b="m2", winner="a")]
    return out

def test_export_is_deterministic_and_independent_of_insertion_order(tmp_path):
    rows = _votes(0)
    dbs = []
    for name, order in (("fb.db", rows), ("shuffled.db", random.Random(1).sample(rows, len(rows)))):
        db = open_feedback(tmp_path / name); add_choices(db, order); dbs.append(db)
    files = [write_feedback_pairs(dbs[0], tmp_path / "a.jsonl"), write_feedback_pairs(dbs[0], tmp_path / "b.jsonl"),
             write_feedback_pairs(dbs[1], tmp_path / "c.jsonl")]
    data = [Path(f["path"]).read_bytes() for f in files]
    assert data[0] == data[1] == data[2]
    summary = export_summary(dbs[0])
    assert summary == export_summary(dbs[1]) and summary["choices"] == len(rows)
    assert summary["pairs"] + sum(summary["left_out"].values()) == len(rows)
    assert summary["left_out"]["identical"] == 1 and summary["left_out"]["tie"] > 0 and summary["left_out"]["duplicate"] > 0
    pairs = read_pairs(tmp_path / "a.jsonl")
    assert pairs == export_pairs(dbs[0]) and len(pairs) == summary["pairs"]
    keys = [(json.dumps(p["messages"]), *sorted((p["chosen"], p["rejected"]))) for p in pairs]
    assert len(set(keys)) == len(keys)  # one pair per prompt and pair of replies
    for db in dbs: db.close()

def _files(path:Path) -> dict:
    "The file's bytes and its write-ahead log's, if the log holds anything (an open connection keeps an empty one)."
    wal = path.with_name(path.name + "-wal")
    return {p.name: p.read_bytes() for p in (path, wal) if p.exists() and p.stat().st_size}

BAD = {  # name: (what to do to the database at `path`, words of the one-line message)
    "not sqlite": (lambda path: open_feedback(path.with_name("notes.db")), "is not a feedback database"),
    "newer schema": (lambda path: open_feedback(path.with_name("newer.db")), f"newer than this code's {SCHEMA_VERSION}"),
    "rating off the scale": (lambda path: add_rating(open_feedback(path), PROMPT, "Lima.", "pip", 0), "outside the scale"),
    "winner names neither": (lambda path: add_choice(open_feedback(path), PROMPT, "Lima.", "Lima!", "pip", "pip", "A or B"), "names neither reply"),
    "empty prompt": (lambda path: add_rating(open_feedback(path), [], "Lima.", "pip", 3), "the prompt is empty"),
    "empty reply": (lambda path: add_choice(open_feedback(path), PROMPT, "Lima.", "\n", "pip", "pip", "a"), "reply b is empty"),
    "one bad in a batch": (lambda path: add_choices(open_feedback(path), [dict(messages=PROMPT, reply_a="Lima.", reply_b="Lima!", model_a="p",
                           model_b="p", winner="a")] * 3 + [dict(messages=PROMPT, reply_a="Lima.", reply_b="", model_a="p", model_b="p", winner="a")]),
                           "choice 4: reply b is empty"),
}

@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_changes_nothing(tmp_path, case):
    path = tmp_path / "fb.db"
    db = open_feedback(path); add_rating(db, PROMPT, "The capital of Peru is Lima.", "pip", 4); db.execute("PRAGMA wal_checkpoint(TRUNCATE)"); db.close()
    (tmp_path / "notes.db").write_bytes(b"my notes, not a database\n" * 100)
    newer = sqlite3.connect(tmp_path / "newer.db"); newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}"); newer.close()
    before = {p.name: _files(p) for p in (path, tmp_path / "notes.db", tmp_path / "newer.db")}
    action, needle = BAD[case]
    with pytest.raises(CourseError) as e: action(path)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert {p.name: _files(p) for p in (path, tmp_path / "notes.db", tmp_path / "newer.db")} == before
    db = open_feedback(path); assert feedback_counts(db) == {"ratings": 1, "choices": 0}; db.close()

@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    return tiny_chat_model(tmp_path_factory.mktemp("feedback-model"))

def test_rate_through_stdin_then_export(tmp_path, chat_model):
    db, out = tmp_path / "fb.db", tmp_path / "pairs.jsonl"
    r = subprocess.run([sys.executable, "-c", RUN_CLI, "feedback", "rate", "--checkpoint", chat_model, "--checkpoint", chat_model, "--db", db,
                        "--prompt", "What is the capital of Peru?", "--rater", "test"], input="neither\nb clearer\n",
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "'neither' is not a choice" in r.stdout and "stored 1 choice in" in r.stdout, r.stdout
    conn = open_feedback(db); stored = choices(conn); conn.close()
    assert [(c["winner"], c["comment"], c["rater"], c["model_a"]) for c in stored] == [("b", "clearer", "test", str(chat_model))]
    e = subprocess.run([sys.executable, "-c", RUN_CLI, "feedback", "export", "--db", db, "--out", out], capture_output=True, text=True, env=ENV, timeout=300)
    assert e.returncode == 0, e.stderr
    assert e.stdout.startswith("wrote 1 pairs from 1 choices"), e.stdout
    pairs = read_pairs(out)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(stored[0]["reply_b"], stored[0]["reply_a"])]

def test_export_does_not_load_torch(tmp_path):
    db = open_feedback(tmp_path / "fb.db"); add_choice(db, PROMPT, "Lima.", "Lima!", "a", "b", "a"); db.close()
    r = imports_of("feedback", "export", "--db", tmp_path / "fb.db", "--out", tmp_path / "p.jsonl", cwd=tmp_path)
    assert r["rc"] == 0 and "torch" not in r["loaded"], r
