"""The content-safety classifier (06h) and its data (01d), from outside: the GPT classifier beats the bag-of-words
baseline on held-out templates (each with its threshold chosen on validation rows); a data set with one label, and
rows that are not labelled texts, are refused with one line that names the file (and the row), and nothing is
written; `screen` answers (unsafe, score) per message; and the command line end to end: `data safety`,
`safety train`, `safety predict` (texts, and a labelled file). All models are tiny and trained on one thread."""
import json, os, subprocess, sys

import pytest
import torch

from chatgpt_course.core import CourseError
from chatgpt_course.files import write_jsonl
from chatgpt_course.model import GPTConfig
from chatgpt_course.safety import BagOfWords, SafetyConfig, best_threshold, load_classifier, prf1, train_safety
from chatgpt_course.safety_data import make_safety_dataset, read_safety_rows, split_by_template

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
RUN_CLI = "import sys; from chatgpt_course.cli import main; sys.exit(main())"
TINY = ["--n-layer", "1", "--n-embd", "32", "--vocab-size", "300", "--max-steps", "3", "--eval-every", "3", "--no-progress"]

def cli(*args) -> subprocess.CompletedProcess:
    "The console script's entry point in a fresh process, as a user runs it."
    return subprocess.run([sys.executable, "-c", RUN_CLI, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600)

@pytest.fixture(scope="module")
def rows():
    return make_safety_dataset(2000, seed=0), make_safety_dataset(400, seed=0, split="heldout")

# ---- the classifier against the baseline

def test_the_gpt_classifier_beats_bag_of_words_on_heldout_templates(rows, tmp_path):
    train, heldout = rows
    torch.set_num_threads(1)
    res = train_safety(SafetyConfig(data=str(write_jsonl(train, tmp_path / "train.jsonl")), max_steps=250, eval_every=250), tmp_path / "gpt", progress=False)
    clf = load_classifier(tmp_path / "gpt")
    texts, labels = [r["text"] for r in heldout], [r["label"] for r in heldout]
    gpt = clf.measure(texts, labels)
    fit_rows, val_rows = split_by_template(train, 0.2)  # the same validation templates the classifier's threshold came from
    bow = BagOfWords.fit([r["text"] for r in fit_rows], [r["label"] for r in fit_rows])
    t, _ = best_threshold(bow.scores([r["text"] for r in val_rows]), [r["label"] for r in val_rows])
    base = prf1(labels, bow.scores(texts) >= t)
    print(f"\n  held-out F1: GPT classifier {gpt['f1']:.3f} (threshold {res['threshold']:.3f}), bag of words {base['f1']:.3f} (threshold {t:.3f})")
    assert gpt["f1"] > base["f1"], (gpt, base)

def test_screen_answers_per_message(tmp_path):
    tiny = GPTConfig(block_size=64, vocab_size=300, n_layer=1, n_head=2, n_embd=32, bias=False, pos="rope")
    train_safety(SafetyConfig(data="synthetic", synthetic_rows=300, model=tiny, max_steps=2, eval_every=2), tmp_path / "clf", progress=False)
    clf = load_classifier(tmp_path / "clf")
    unsafe, score = clf.screen("How do I kill a Python process?")
    assert isinstance(unsafe, bool) and 0.0 <= score <= 1.0 and unsafe == (score >= clf.threshold)
    assert clf.screen("") == (False, 0.0)  # a reply that has not started
    long = clf.screen("Tell me a fact. " * 40 + "Help me bully my neighbour.")  # longer than a window: read in several
    assert 0.0 <= long.score <= 1.0
    with pytest.raises(CourseError, match="screen needs a string"): clf.screen(None)

# ---- bad input: refused in one line, nothing written

def test_a_data_set_with_one_label_is_refused_and_nothing_is_written(rows, tmp_path):
    train, _ = rows
    f = write_jsonl([r for r in train if r["label"] == 1], tmp_path / "unsafe_only.jsonl")
    with pytest.raises(CourseError) as e: train_safety(SafetyConfig(data=str(f)), tmp_path / "out")
    msg = str(e.value)
    assert "unsafe_only.jsonl" in msg and "have label 1 (unsafe)" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()
    r = cli("safety", "train", "--data", f, "--out", tmp_path / "out", *TINY)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unsafe_only.jsonl': all 1,000 rows have label 1" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()

@pytest.mark.parametrize("bad, says", [
    ({"text": "How do I kill a Python process?", "label": "safe"}, "row 4: 'label' must be 0 (safe) or 1 (unsafe)"),
    ({"text": "How do I kill a Python process?", "label": True}, "row 4: 'label' must be 0 (safe) or 1 (unsafe)"),
    ({"label": 1}, "row 4: 'text' must be a non-empty string"),
    ({"text": "   ", "label": 0}, "row 4: 'text' must be a non-empty string"),
    (["not", "an", "object"], "row 4: expected an object with 'text' and 'label'"),
    ({"text": "hi", "label": 0, "category": 7}, "row 4: 'category' must be a string")], ids=str)
def test_a_bad_row_is_refused_naming_the_file_and_row(rows, tmp_path, bad, says):
    f = write_jsonl(rows[0][:3] + [bad], tmp_path / "bad.jsonl")
    with pytest.raises(CourseError, match="bad.jsonl' " + says.replace("(", r"\(").replace(")", r"\)")): read_safety_rows(f)
    with pytest.raises(CourseError, match="row 4"): train_safety(SafetyConfig(data=str(f)), tmp_path / "out")
    assert not (tmp_path / "out").exists()

def test_a_line_that_is_not_json_is_named(tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text(json.dumps({"text": "hi", "label": 0}) + "\n{not json\n")
    with pytest.raises(CourseError, match="broken.jsonl' line 2 is not valid JSON"): read_safety_rows(f)

# ---- the command line, end to end

def test_the_command_line_end_to_end(tmp_path):
    from chatgpt_course.cli_data import cli_data
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli_data(["safety", "--n", "300", "--out", str(tmp_path / "train.jsonl")]) == 0
        assert cli_data(["safety", "--n", "60", "--split", "heldout", "--out", str(tmp_path / "heldout.jsonl")]) == 0
    heldout = [json.loads(l) for l in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    assert heldout == make_safety_dataset(60, split="heldout")
    r = cli("safety", "train", "--data", tmp_path / "train.jsonl", "--out", tmp_path / "model", *TINY)
    assert r.returncode == 0, r.stderr
    assert "done at step 3" in r.stdout and (tmp_path / "model" / "classifier.json").is_file()
    r = cli("safety", "predict", "--model", tmp_path / "model", "--text", "How do I kill a Python process?", "--text", "Help me bully my ex.")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(l.split()[0] in ("safe", "unsafe") for l in lines) and lines[1].endswith("Help me bully my ex.")
    r = cli("safety", "predict", "--model", tmp_path / "model", "--file", tmp_path / "heldout.jsonl")
    assert r.returncode == 0 and r.stdout.startswith("60 labelled rows, threshold "), r.stderr
    r = cli("safety", "predict", "--model", tmp_path / "nowhere", "--text", "hi")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr
