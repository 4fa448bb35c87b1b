"""Reinforcement learning with a verifiable reward (06g) end to end: one policy-gradient step on a reward that favours
one token makes that token likelier; an RL run killed with SIGKILL and resumed ends bitwise identical to an
uninterrupted one (its sampling is seeded from the loader's checkpointed generator); and an RL task whose prompts have
no verifiable answer is refused with a one-line message that names the file and the row, with nothing written. All
models are tiny, on CPU."""
import json
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from chatgpt_course.checkpoint import latest_checkpoint, load_trained
from chatgpt_course.core import precision_for, seed_everything
from chatgpt_course.engine import Engine, SamplingParams
from chatgpt_course.files import write_jsonl
from chatgpt_course.model import GPT, GPTConfig
from chatgpt_course.optim import make_optimizer, train_step
from chatgpt_course.rl import arith_prompts, group_batch, pass_at_k, rl_objective
from _cli import killed_and_resumed, module_cli, refused, tiny_chat_model, train_losses  # tests/_cli.py

TINY_RL = ["--max-operand", "9", "--synthetic-prompts", "24", "--k", "4", "--batch-size", "2", "--max-new-tokens", "8", "--warmup-steps", "1",
           "--lr", "1e-3", "--eval-prompts", "2", "--eval-add-sub", "1", "--threads", "1", "--no-progress"]

rl_cli = partial(module_cli, "cli_rl")  # `chatgpt-course rl ARGS`, through the console script's entry point

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    "A tiny base run with the chat tokens, fine-tuned for two steps."
    d = tmp_path_factory.mktemp("rl")
    tiny_chat_model(d, 192, "--heldout", "")
    return d

# ---- the update

class _Ids:  # the engine needs only decode_bytes and the special tokens of a tokenizer
    n_vocab, special_tokens, name = 64, {}, "ids"
    def decode_bytes(self, ids): return bytes(ids)

def test_a_step_on_a_reward_that_favours_one_token_raises_its_probability():
    seed_everything(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=1, n_head=2, n_embd=32, pos="rope")).eval()
    prompt = [5, 6, 7]
    comps = [c.ids for c in Engine(model, _Ids()).generate([prompt], SamplingParams(max_new_tokens=1, n=32, seed=1))]
    counts = {t: sum(c == [t] for c in comps) for t, in comps}
    target = max(counts, key=lambda t: (counts[t], t)); assert counts[target] < len(comps)  # sampled, and not always
    stats = [[float(c == [target]), float(c == [target]), 0.0] for c in comps]
    p = lambda m: F.softmax(m(torch.tensor([prompt]))[0][0, -1].detach(), -1)[target].item()
    before, ref = p(model), GPT(model.config); ref.load_state_dict(model.state_dict()); ref.eval()
    prec = precision_for("cpu", "fp32")
    opt = make_optimizer(model.train(), 1e-2, 0.0)
    r = train_step(model, [group_batch([prompt], comps, stats)], opt, prec, prec.scaler(), objective=partial(rl_objective, ref=ref, kl_coef=0.05))
    after = p(model.eval())
    assert after > before, (before, after)
    assert r["reward"] == pytest.approx(counts[target] / len(comps)) and r["targets"] == len(comps)
    _, _, m = rl_objective(model, group_batch([prompt], comps, stats), ref=ref)
    assert m["kl"] > 0  # the policy has moved away from the reference
    _, _, m0 = rl_objective(ref, group_batch([prompt], comps, stats), ref=ref)
    assert m0["kl"].abs() < 1e-6  # and the reference is at KL 0 from itself

def test_pass_at_k_is_the_unbiased_estimator():
    import math
    for n, c, k in [(10, 3, 1), (10, 3, 5), (16, 0, 4), (16, 16, 16), (50, 4, 49)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)

# ---- runs through the command line

def test_sigkill_then_resume_is_bitwise_identical(work, tmp_path):
    flags = ["--base", work / "sft", *TINY_RL, "--max-steps", "6", "--ckpt-every", "2", "--eval-every", "3"]
    straight, killed, r = killed_and_resumed(["rl", *flags], tmp_path, 2, 6, module="cli_rl")
    assert "done at step 6" in r.stdout and (straight / "rl.png").exists()
    a, b = latest_checkpoint(straight), latest_checkpoint(killed)
    for f in ("model.safetensors", "optimizer.pt"): assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert train_losses(straight) == train_losses(killed)
    recs = [json.loads(l) for l in (straight / "log.jsonl").read_text().splitlines()]
    assert all(0 <= r["reward"] <= 1.2 and 0 <= r["accuracy"] <= 1 for r in recs if r["kind"] == "train")
    assert any("val_accuracy" in r and "val_add_sub" in r for r in recs if r["kind"] == "eval")
    model, tok, meta = load_trained(straight)  # a run directory like any other
    assert meta["config"]["base"] == str(work / "sft") and "<|assistant|>" in tok.special_tokens

# ---- bad input: one line that names the file and the row; nothing written

def test_prompts_without_a_verifiable_answer_are_refused(work, tmp_path):
    good = [{k: it[k] for k in ("messages", "expect")} for it in arith_prompts(3, max_operand=9)]
    f = tmp_path / "no_answer.jsonl"; write_jsonl([good[0], good[1], {"messages": good[2]["messages"]}], f)
    out = tmp_path / "out"
    for flag in ("--prompts", "--heldout"):
        r = rl_cli("--base", work / "sft", *TINY_RL, "--max-steps", "1", flag, f, "--out", out)
        refused(r, out, repr(str(f)), "row 3 has no verifiable answer", command="rl")
