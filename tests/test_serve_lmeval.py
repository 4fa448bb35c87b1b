"""lm-evaluation-harness through the HTTP server (notebook 08a) equals lm-evaluation-harness in-process.

A tiny GPT-2-shaped model (untrained) is saved twice: as a checkpoint that the backend (08b) serves, and as a Hugging
Face model with its tokenizer (04's `save_hf`, 07c's `save_hf_tokenizer`). 07c's `facts` multiple-choice task, as a
local lm-eval task, is then scored by lm-eval's `hf` model in-process and by its `local-completions` model against the
server on a free loopback port (the harness tokenizes with the exported tokenizer and sends token ids with `echo`,
`logprobs` and `max_tokens: 1`): the same acc and acc_norm, and every choice's log-likelihood within 1e-4.

lm-eval's API models need `tenacity` (lm-eval's `api` extra); without it the test skips.
"""
import contextlib, io
from dataclasses import asdict

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("tenacity", reason="lm-eval's API models (local-completions) need tenacity: pip install 'lm-eval[api]'")

from chatgpt_course.backend import Backend
from chatgpt_course.checkpoint import save_checkpoint
from chatgpt_course.data import shakespeare_documents, split_train_val
from chatgpt_course.harness import lm_eval_scores, mc_items, mc_task, save_hf_tokenizer, write_lm_eval_task
from chatgpt_course.model import GPT, GPTConfig, save_hf
from chatgpt_course.serve import ServerThread, make_app
from chatgpt_course.tokenizer import BPETokenizer

def test_lm_eval_through_the_api_equals_in_process(tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager
    train_docs, _ = split_train_val(shakespeare_documents())
    tok = BPETokenizer.train("\n\n".join(train_docs)[:100_000], 400)  # GPT-2's pattern, with the chat tokens
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=64, vocab_size=tok.n_vocab, n_layer=1, n_head=2, n_embd=32, bias=False, gelu_approx="none")
    model = GPT(cfg).eval()
    run, hf = tmp_path / "run", tmp_path / "hf"
    tok.save(run / "tokenizer"); save_checkpoint(run, 0, model, meta={"config": {"model": asdict(cfg)}, "tokenizer": "tokenizer"})
    save_hf(model, hf); save_hf_tokenizer(tok, hf, cfg.block_size)
    items = mc_items("facts", n=24)
    task = write_lm_eval_task(items, tmp_path / "task", "course_facts", mc_task("facts").delimiter)
    assert all(len(tok.encode(it["context"] + " " + c)) < cfg.block_size - 1 for it in items for c in it["choices"])  # no truncation
    here = lm_eval_scores(hf, task, batch_size=8)
    with Backend(run, device="cpu") as be, ServerThread(make_app(be, feedback_db=None)) as srv:
        args = (f"base_url={srv.url}/v1/completions,model={be.name},tokenizer={hf},tokenizer_backend=huggingface,"
                f"tokenized_requests=True,max_length={cfg.block_size},num_concurrent=1,max_retries=1")
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
            res = lm_eval.simple_evaluate(model="local-completions", model_args=args, tasks=[task.stem], batch_size=8, log_samples=True,
                                          task_manager=TaskManager(include_path=str(task.parent), include_defaults=False),
                                          bootstrap_iters=0, verbosity="ERROR")
    r, samples = res["results"][task.stem], sorted(res["samples"][task.stem], key=lambda s: s["doc_id"])
    api_lls = [[ll for ll, _ in s["filtered_resps"]] for s in samples]
    assert (len(samples), r["acc,none"], r["acc_norm,none"]) == (here["n"], here["acc"], here["acc_norm"])
    assert max(abs(a - b) for r1, r2 in zip(api_lls, here["lls"]) for a, b in zip(r1, r2)) < 1e-4
