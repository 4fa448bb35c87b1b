"""The multiple-choice harness (notebook 07c) against lm-evaluation-harness, outside the notebook.

- On both bundled tasks (one with few-shot prompts, truncated by a short context window), a tiny GPT-2-shaped model
  exported with `save_hf` + `save_hf_tokenizer` gets the same acc and acc_norm from lm-eval, run offline, as from
  our harness, and the same log-likelihood for every choice.
- acc_norm (per character, as lm-eval divides) and acc part on items built so that the length decides.
- An unknown task is refused in one line that lists the tasks, before any checkpoint is read.
"""
import pytest
import torch

from chatgpt_course.core import CourseError
from chatgpt_course.data import shakespeare_documents, split_train_val
from chatgpt_course.harness import (MC_TASKS, choice_loglikelihoods, lm_eval_scores, mc_metrics, mc_task, run_mc,
                                    save_hf_tokenizer, mc_items, write_lm_eval_task)
from chatgpt_course.model import GPT, GPTConfig, save_hf
from chatgpt_course.tokenizer import BPETokenizer

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "An untrained GPT-2-shaped model with a small BPE, and its Hugging Face export."
    train_docs, _ = split_train_val(shakespeare_documents())
    tok = BPETokenizer.train("\n\n".join(train_docs)[:200_000], 512)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=tok.n_vocab, n_layer=2, n_head=2, n_embd=32, bias=False,
                          gelu_approx="none")).eval()
    hf_dir = tmp_path_factory.mktemp("hf")
    save_hf(model, hf_dir); save_hf_tokenizer(tok, hf_dir, model.config.block_size)
    return model, tok, hf_dir

@pytest.mark.parametrize("task,shots", [("shakespeare", 2), ("facts", 0)])
def test_equal_to_lm_eval(tiny, tmp_path, task, shots):
    model, tok, hf_dir = tiny
    items = mc_items(task, n=30, shots=shots)
    delim = mc_task(task).delimiter
    ours_lls = choice_loglikelihoods(model, tok, items, delim, batch_size=8)
    ours = mc_metrics(items, ours_lls)
    ref = lm_eval_scores(hf_dir, write_lm_eval_task(items, tmp_path, f"course_{task}", delim), batch_size=8)
    assert (ref["n"], ref["acc"], ref["acc_norm"]) == (ours["n"], ours["acc"], ours["acc_norm"])
    assert max(abs(a - b) for r1, r2 in zip(ours_lls, ref["lls"]) for a, b in zip(r1, r2)) < 1e-4
    if shots:  # the few-shot prompts overflow the 64-token window: lm-eval's left truncation was exercised too
        assert any(len(tok.encode(it["context"])) > model.config.block_size for it in items)

def test_acc_norm_is_per_character():
    items = [{"context": "To be, or not to be:", "choices": ["no.", " that is the question"], "gold": 1}]
    m = mc_metrics(items, [[-8.0, -12.0]])  # -8 beats -12 in total; -12/21 beats -8/3 per character
    assert (m["acc"], m["acc_norm"]) == (0.0, 1.0)
    lo, hi = m["acc_norm_ci"]
    assert 0 < lo < 1 == hi

def test_unknown_task_refused(tmp_path):
    with pytest.raises(CourseError, match=f"unknown multiple-choice task 'mmlu'; the tasks are: {', '.join(MC_TASKS)}"):
        run_mc(tmp_path / "no-such-run", "mmlu")
    with pytest.raises(CourseError, match="unknown multiple-choice task"):
        mc_items("hellaswag")
