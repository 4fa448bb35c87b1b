"""The metrics of notebook 07a against the libraries everyone quotes, and `chatgpt-course eval metric` end to end.

- classification: accuracy, the confusion matrix and precision/recall/F1 (binary, macro, micro, weighted, per class,
  every `zero_division`) equal scikit-learn's on fixtures with a class never predicted and one never true;
- BLEU: corpus and sentence BLEU (score, counts, totals, precisions, brevity penalty, lengths) equal sacrebleu's for
  every smoothing, with the effective order on and off, one and two reference sets, on fixtures with an empty
  hypothesis, a hypothesis longer than its references, unicode and Chinese;
- ROUGE: ROUGE-1/2/L/Lsum equal rouge-score's, with and without stemming, one and several references;
- property tests (hypothesis): random sentences and random labels, the same equalities;
- perplexity and bits per byte agree with the training stage's definitions;
- the library imports none of the reference packages (nor PyTorch, nor NLTK unless asked to stem);
- the command line: JSON on stdout, and one-line errors naming the file for bad files.
"""
import json, logging, math, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import sacrebleu
import sklearn.metrics as skm
from rouge_score import rouge_scorer

from chatgpt_course.core import CourseError
from chatgpt_course.metrics import (SMOOTHING, ROUGE_TYPES, accuracy, confusion_matrix, precision_recall_f1, classification_report,
                                    corpus_bleu, sentence_bleu, rouge_scores, corpus_rouge, perplexity, lm_metrics, score_files)
from _cli import SCRIPT, imports_of

logging.getLogger("sacrebleu").setLevel(logging.ERROR)

TRUTHS = ["cat", "cat", "cat", "dog", "dog", "pig", "owl", "owl", "cat", "dog", "pig", "cat"]
PREDS = ["cat", "dog", "cat", "dog", "pig", "pig", "cat", "dog", "cat", "cat", "bat", "cat"]  # owl never predicted, bat never true
HYPS = ["The cat sat on the mat.", "", "the the the the the the the", "Le café coûte 3,50 € — très cher !", "我喜欢自然语言处理。",
        "The cats are running in the garden.\nThe dog sleeps.", "It is a guide to action which ensures that the military always obeys the commands of the party."]
REFS = [["The cat is on the mat.", "Nothing was said.", "the cat is on the mat", "Le café coûte 3,50 €, c'est très cher !", "我喜欢自然语言处理。",
         "A cat runs in the garden.\nThe dogs are sleeping.", "It is a guide to action that ensures that the military will forever heed Party commands."],
        ["There is a cat on the mat.", "Silence.", "a cat is on the mat", "Un café à 3,50 € : très cher !", "我很喜欢自然语言处理。",
         "The cat ran through the garden while the dog slept.",
         "It is the guiding principle which guarantees the military forces always being under the command of the Party."]]
NAN = float("nan")


def sk_prf(y, p, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); return skm.precision_recall_fscore_support(y, p, **kw)

def close(a, b, eps=1e-12):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape and np.allclose(a, b, rtol=0, atol=eps, equal_nan=True), (a, b)

def same_bleu(ours, ref, smooth, value=None):
    "Equal to sacrebleu's BLEUScore (whose counts and totals carry add-k's k on orders 2 and up)."
    close([ours.score, ours.bp, *ours.precisions], [ref.score, ref.bp, *ref.precisions], 1e-9)
    k = (SMOOTHING["add-k"] if value is None else value) if smooth == "add-k" and any(ours.counts) else 0
    assert [ours.counts[0], *[m + k for m in ours.counts[1:]]] == list(ref.counts)
    assert [ours.totals[0], *[t + k for t in ours.totals[1:]]] == list(ref.totals)
    assert (ours.sys_len, ours.ref_len) == (ref.sys_len, ref.ref_len)


# ---------------------------------------------------------------- classification
@pytest.mark.parametrize("zero_division", [0.0, 1.0, NAN])
@pytest.mark.parametrize("average", ["macro", "micro", "weighted", None])
def test_prf_equals_sklearn(average, zero_division):
    ours = precision_recall_f1(TRUTHS, PREDS, average=average, zero_division=zero_division)
    ref = sk_prf(TRUTHS, PREDS, average=average, zero_division=zero_division)
    close([ours["precision"], ours["recall"], ours["f1"]], ref[:3])
    if average is None: assert ours["support"] == list(ref[3]) and ours["labels"] == sorted(set(TRUTHS) | set(PREDS))

def test_binary_confusion_accuracy_and_report():
    y, p = [0, 1, 1, 0, 1, 0, 0, 1], [0, 1, 0, 0, 1, 1, 0, 0]
    close(list(precision_recall_f1(y, p).values()), sk_prf(y, p, average="binary")[:3])
    close(list(precision_recall_f1(y, [0] * 8, zero_division=1.0).values()), sk_prf(y, [0] * 8, average="binary", zero_division=1.0)[:3])
    assert (confusion_matrix(TRUTHS, PREDS) == skm.confusion_matrix(TRUTHS, PREDS)).all()
    assert (confusion_matrix(TRUTHS, PREDS, labels=["owl", "cat"]) == skm.confusion_matrix(TRUTHS, PREDS, labels=["owl", "cat"])).all()
    assert accuracy(TRUTHS, PREDS) == skm.accuracy_score(TRUTHS, PREDS)
    rep = classification_report(TRUTHS, PREDS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); sk = skm.classification_report(TRUTHS, PREDS, output_dict=True, zero_division=0.0)
    for row in rep["per_class"]: close([row[k] for k in ("precision", "recall", "f1", "support")], list(sk[row["label"]].values()))
    close(list(rep["macro"].values()), list(sk["macro avg"].values())); close(list(rep["weighted"].values()), list(sk["weighted avg"].values()))

def test_macro_f1_is_the_mean_of_class_f1():
    y, p = [0] * 5 + [1] * 5, [0] + [1] * 9
    m = precision_recall_f1(y, p, average="macro")
    close(m["f1"], skm.f1_score(y, p, average="macro"))
    assert 2 * m["precision"] * m["recall"] / (m["precision"] + m["recall"]) > m["f1"] + 0.1

@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcde")), min_size=1, max_size=30),
       st.sampled_from([0.0, 1.0, NAN]))
def test_prf_property(pairs, zd):
    y, p = [a for a, _ in pairs], [b for _, b in pairs]
    for avg in ("macro", "micro", "weighted"):
        close(list(precision_recall_f1(y, p, average=avg, zero_division=zd).values()), sk_prf(y, p, average=avg, zero_division=zd)[:3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); assert (confusion_matrix(y, p) == skm.confusion_matrix(y, p)).all()  # it warns on one label


# ---------------------------------------------------------------- BLEU
@pytest.mark.parametrize("smooth,value", [("exp", None), ("none", None), ("floor", None), ("floor", 0.3), ("add-k", None), ("add-k", 0.5)])
@pytest.mark.parametrize("effective_order", [False, True])
@pytest.mark.parametrize("n_refs", [1, 2])
def test_bleu_equals_sacrebleu(smooth, value, effective_order, n_refs):
    refs = REFS[:n_refs]
    same_bleu(corpus_bleu(HYPS, refs, smooth, value, effective_order=effective_order),
              sacrebleu.corpus_bleu(HYPS, refs, smooth_method=smooth, smooth_value=value, use_effective_order=effective_order), smooth, value)
    for i, h in enumerate(HYPS):
        r = [s[i] for s in refs]
        same_bleu(sentence_bleu(h, r, smooth, value, effective_order=effective_order),
                  sacrebleu.sentence_bleu(h, r, smooth_method=smooth, smooth_value=value, use_effective_order=effective_order), smooth, value)

def test_bleu_options_and_corpus_is_not_the_mean():
    same_bleu(corpus_bleu(HYPS, REFS, lowercase=True), sacrebleu.corpus_bleu(HYPS, REFS, lowercase=True), "exp")
    same_bleu(corpus_bleu(HYPS, REFS, tokenize="none"), sacrebleu.corpus_bleu(HYPS, REFS, tokenize="none"), "exp")
    gap = [REFS[0], [None, *REFS[1][1:]]]
    same_bleu(corpus_bleu(HYPS, gap), sacrebleu.corpus_bleu(HYPS, gap), "exp")
    mean = np.mean([sentence_bleu(h, [r[i] for r in REFS]).score for i, h in enumerate(HYPS)])
    assert abs(corpus_bleu(HYPS, REFS).score - mean) > 1

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "café", "3,50", "1990-2000", ".", ",", "!", "&amp;", "我", "喜欢"]
sentences = st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join)

@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(sentences, sentences, sentences), min_size=1, max_size=5), st.sampled_from(list(SMOOTHING)))
def test_bleu_property(rows, smooth):
    hyps, r1, r2 = map(list, zip(*rows))
    same_bleu(corpus_bleu(hyps, [r1, r2], smooth), sacrebleu.corpus_bleu(hyps, [r1, r2], smooth_method=smooth), smooth)
    same_bleu(sentence_bleu(hyps[0], [r1[0]], smooth), sacrebleu.sentence_bleu(hyps[0], [r1[0]], smooth_method=smooth), smooth)


# ---------------------------------------------------------------- ROUGE
@pytest.mark.parametrize("stem", [False, True])
def test_rouge_equals_rouge_score(stem):
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=stem)
    for i, h in enumerate(HYPS):
        for refs in ([REFS[0][i]], [r[i] for r in REFS]):
            ours, theirs = rouge_scores(h, refs, stem=stem), scorer.score_multi(refs, h)
            for t in ROUGE_TYPES: close(ours[t], tuple(theirs[t]))
    mean = corpus_rouge(HYPS, REFS, stem=stem)
    theirs = [scorer.score_multi([r[i] for r in REFS], h) for i, h in enumerate(HYPS)]
    for t in ROUGE_TYPES: close(mean[t], np.mean([tuple(s[t]) for s in theirs], axis=0))

def test_rouge_drops_non_ascii():
    assert rouge_scores("我喜欢自然语言处理。", "我喜欢自然语言处理。")["rouge1"].f == 0.0  # no tokens at all
    assert rouge_scores("café", "cafe")["rouge1"].f == 0.0 and rouge_scores("café", "caf")["rouge1"].f == 1.0

lines = st.lists(st.sampled_from(["the", "cats", "running", "runs", "dog", "a", "café", "!", "\n", "sleeping"]), max_size=14).map(" ".join)

@settings(max_examples=60, deadline=None)
@given(lines, lines, lines, st.booleans())
def test_rouge_property(pred, ref1, ref2, stem):
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=stem)
    ours, theirs = rouge_scores(pred, [ref1, ref2], stem=stem), scorer.score_multi([ref1, ref2], pred)
    for t in ROUGE_TYPES: close(ours[t], tuple(theirs[t]))


# ---------------------------------------------------------------- perplexity, errors, imports
def test_perplexity_and_bits_per_byte():
    from chatgpt_course.batches import bits_per_byte
    m = lm_metrics(120.0, 50, 80)
    close([m["perplexity"], m["bpb"], m["bits_per_token"]], [math.exp(2.4), bits_per_byte(120.0, 80), 2.4 / math.log(2)])
    close(perplexity(10 * math.log(256), 10), 256, 1e-9)

@pytest.mark.parametrize("call,says", [
    (lambda: accuracy([1, 2], [1]), "1 predictions for 2 truths"),
    (lambda: precision_recall_f1([], []), "nothing to measure"),
    (lambda: corpus_bleu(HYPS, REFS[0]), "references[0] is a string"),
    (lambda: corpus_bleu(HYPS, [REFS[0][:2]]), "has 2 references for 7 items"),
    (lambda: corpus_bleu([], [[]]), "no hypotheses"),
    (lambda: corpus_rouge([], [[]]), "no predictions"),
    (lambda: rouge_scores("a", []), "at least one reference"),
])
def test_bad_input_is_one_line(call, says):
    with pytest.raises(CourseError) as e: call()
    assert says in str(e.value) and "\n" not in str(e.value)

def test_the_library_imports_no_reference_package(tmp_path):
    code = ("import sys; from chatgpt_course.metrics import rouge_scores, corpus_bleu; import chatgpt_course.cli_eval; "
            "rouge_scores('the cats', 'a cat'); corpus_bleu(['a b'], [['a b']]); "
            "print(sorted(m for m in ('sacrebleu', 'rouge_score', 'sklearn', 'nltk', 'torch', 'absl') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)


# ---------------------------------------------------------------- the command line
def eval_cli(*args, cwd):
    "Run `chatgpt-course eval ...` as a user would."
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "chatgpt_course.cli"]
    return subprocess.run(cmd + ["eval", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)

def write_lines(path: Path, lines) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8"); return path

def test_cli_bleu_rouge_prf(tmp_path):
    hyp, r1, r2 = (write_lines(tmp_path / f"{n}.txt", x) for n, x in (("hyp", HYPS[:5]), ("r1", REFS[0][:5]), ("r2", REFS[1][:5])))
    r = eval_cli("metric", "bleu", "--pred", hyp, "--ref", r1, "--ref", r2, "--smooth", "floor", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out, ref = json.loads(r.stdout), sacrebleu.corpus_bleu(HYPS[:5], [REFS[0][:5], REFS[1][:5]], smooth_method="floor")
    close([out["bleu"], out["bp"]], [ref.score, ref.bp], 1e-9); assert out["counts"] == list(ref.counts) and out["items"] == 5
    r = eval_cli("metric", "rouge", "--pred", hyp, "--ref", r1, "--stem", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    close(json.loads(r.stdout)["rouge2"]["f"], corpus_rouge(HYPS[:5], [REFS[0][:5]], stem=True)["rouge2"].f)
    pred, true = write_lines(tmp_path / "pred.txt", PREDS), write_lines(tmp_path / "true.txt", TRUTHS)
    r = eval_cli("metric", "prf", "--pred", pred, "--ref", true, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["macro"] == score_files("prf", pred, [true])["macro"]

def test_cli_bad_files_name_the_file(tmp_path):
    hyp, ref = write_lines(tmp_path / "hyp.txt", ["a cat", "a dog"]), write_lines(tmp_path / "ref.txt", ["a cat", "the dog"])
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1")); (tmp_path / "empty.txt").write_bytes(b"")
    short = write_lines(tmp_path / "short.txt", ["a cat"])
    for args, says in (([tmp_path / "latin1.txt", "--ref", ref], "latin1.txt' is not valid UTF-8"),
                       ([hyp, "--ref", tmp_path / "empty.txt"], "empty.txt' is empty"),
                       ([hyp, "--ref", ref, "--ref", short], "short.txt' has 1 lines and"),
                       ([hyp, "--ref", tmp_path / "missing.txt"], "missing.txt' does not exist")):
        r = eval_cli("metric", "bleu", "--pred", *args, cwd=tmp_path)
        assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and says in r.stderr, (args, r.stderr)

def test_cli_eval_does_not_load_torch(tmp_path):
    hyp, ref = write_lines(tmp_path / "hyp.txt", ["a cat"]), write_lines(tmp_path / "ref.txt", ["a cat"])
    rep = imports_of("eval", "metric", "bleu", "--pred", hyp, "--ref", ref, cwd=tmp_path)
    assert rep["rc"] == 0 and rep["loaded"] == [], rep
