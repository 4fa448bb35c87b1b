"""Preference tuning (DPO, 06f) end to end: the loss is ln 2 when the policy is the reference and equals an independent
implementation of TRL's sigmoid DPO loss and its reported rewards (TRL 1.x computes it inside
`DPOTrainer._compute_loss`, which needs a model and a trainer, so the formula is written out here); a DPO run killed
with SIGKILL and resumed ends bitwise identical to an uninterrupted one; and every bad pairs file is refused with a
one-line message that names the file, the row and the problem, with nothing written. All models are tiny, on CPU."""
import json, math
from functools import partial

import numpy as np
import pytest
import torch

from chatgpt_course.checkpoint import latest_checkpoint, load_trained
from chatgpt_course.files import write_jsonl
from chatgpt_course.model import GPT, GPTConfig
from chatgpt_course.pairs import make_pairs, write_pairs
from chatgpt_course.preference import PairBatches, dpo_loss, dpo_objective, encode_pairs, pair_logps
from chatgpt_course.tokenizer import gpt2_tokenizer
from _cli import killed_and_resumed, module_cli, refused, tiny_chat_model, train_losses  # tests/_cli.py

TINY_DPO = ["--seq-len", "128", "--batch-size", "4", "--warmup-steps", "1", "--eval-pairs", "8", "--threads", "1", "--no-progress"]

dpo_cli = partial(module_cli, "cli_preference")  # `chatgpt-course dpo ARGS`, through the console script's entry point

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    "A tiny base run with the chat tokens, fine-tuned for two steps; a pairs file and a held-out pairs file."
    d = tmp_path_factory.mktemp("dpo")
    tiny_chat_model(d, block_size=128)
    write_pairs(make_pairs(48, seed=0), d / "pairs.jsonl")
    write_pairs(make_pairs(16, seed=0, split="heldout"), d / "heldout.jsonl")
    return d

def dpo_flags(work, *more):
    return ["--base", work / "sft", "--pairs", work / "pairs.jsonl", "--heldout", work / "heldout.jsonl", *TINY_DPO, *more]

# ---- the loss

def trl_sigmoid_dpo(pc, pr, rc, rr, beta):
    "TRL's sigmoid DPO loss and metrics (trl/trainer/dpo_trainer.py, f_divergence 'reverse_kl'), written out in float64 Python."
    out = []
    for a, b, c, d in zip(pc, pr, rc, rr):
        chosen_logratio, rejected_logratio = a - c, b - d
        z = beta * (chosen_logratio - rejected_logratio)
        loss = math.log1p(math.exp(-z)) if z > -30 else -z + math.log1p(math.exp(z))  # -log sigmoid(z), stably
        cr, rj = beta * chosen_logratio, beta * rejected_logratio  # rewards/chosen, rewards/rejected
        out.append((loss, cr, rj, cr - rj, float(cr > rj)))  # ... rewards/margins, rewards/accuracies
    return np.array(out)

def test_the_loss_and_rewards_equal_trls_formula():
    g = torch.Generator().manual_seed(0)
    lp = (torch.randn(4, 64, generator=g, dtype=torch.float64) * 20 - 40)  # summed log-probabilities: large and negative
    lp[:, :4] = lp[:, :4] * 10  # and some margins far out on both sides
    for beta in (0.1, 0.5, 2.0):
        losses, rc, rr = dpo_loss(*lp, beta=beta)
        want = trl_sigmoid_dpo(*lp.tolist(), beta)
        np.testing.assert_allclose(losses.numpy(), want[:, 0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.stack([rc, rr, rc - rr, (rc > rr).double()], 1), want[:, 1:], rtol=1e-12, atol=1e-12)

def test_the_loss_is_ln2_when_the_policy_is_the_reference():
    tok = gpt2_tokenizer(chat=True)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, vocab_size=50304, n_layer=1, n_head=2, n_embd=16, pos="rope")).eval()
    ex = encode_pairs(make_pairs(12, seed=4), tok, 257)
    ex.ref = pair_logps(model, ex, batch_size=5)  # other batches than the loader's
    (batch,) = PairBatches(ex, 12, seed=1).next()
    with torch.no_grad(): loss_sum, n, m = dpo_objective(model, batch, beta=0.3)
    assert n == 12 and loss_sum.item() / n == pytest.approx(math.log(2), abs=1e-6)
    assert abs(m["margin"].item()) < 1e-5 and abs(m["reward_chosen"].item()) < 1e-5
    same = torch.tensor(ex.ref)
    losses, rc, rr = dpo_loss(same[:, 0], same[:, 1], same[:, 0], same[:, 1], beta=0.3)
    assert torch.equal(losses, torch.full_like(losses, math.log(2))) and not rc.any() and not rr.any()

# ---- runs through the command line

def test_sigkill_then_resume_is_bitwise_identical(work, tmp_path):
    flags = ["--max-steps", "12", "--ckpt-every", "4", "--eval-every", "6"]
    straight, killed, r = killed_and_resumed(["dpo", *dpo_flags(work, *flags)], tmp_path, 4, 12, module="cli_preference")
    assert "done at step 12" in r.stdout and (straight / "dpo.png").exists()
    a, b = latest_checkpoint(straight), latest_checkpoint(killed)
    for f in ("model.safetensors", "optimizer.pt"): assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert train_losses(straight) == train_losses(killed)
    run = json.loads((straight / "run.json").read_text())
    assert run["start_loss"] == pytest.approx(math.log(2), abs=1e-3) and train_losses(straight)[0] == pytest.approx(math.log(2), abs=1e-3)
    ev = [json.loads(l) for l in (straight / "log.jsonl").read_text().splitlines() if '"eval"' in l]
    assert ev and all(0 <= e["val_accuracy"] <= 1 and "val_margin" in e and "val_accuracy_style" in e for e in ev)
    model, tok, meta = load_trained(straight)  # a run directory like any other
    assert meta["config"]["base"] == str(work / "sft") and "<|assistant|>" in tok.special_tokens

# ---- bad input: one line that names the file, the row and the problem; nothing written

def _bad_rows():
    good = make_pairs(1, seed=0)[0]
    conv = lambda reply: good["messages"] + [{"role": "assistant", "content": reply}]
    return {
        "identical replies": ({**good, "rejected": good["chosen"]}, "its two replies are identical"),
        "prompts differ": ({"chosen": conv("Yes."), "rejected": [{"role": "system", "content": "Other."}] + conv("No.")[1:]},
                           "the chosen and rejected conversations differ at message 0"),
        "fails chat validation": ({**good, "messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}, good["messages"][-1]]},
                                  "message 1 must be"),
        "ends with the assistant": ({**good, "messages": conv("Hi.")}, "'messages' must end with the user's turn"),
        "empty reply": ({**good, "chosen": "  "}, "'chosen' must be a non-empty string"),
    }
BAD = _bad_rows()

@pytest.mark.parametrize("case", BAD)
def test_bad_pairs_are_refused_with_one_line_and_nothing_written(work, tmp_path, case):
    row, problem = BAD[case]
    good = make_pairs(3, seed=1)
    f = tmp_path / "bad.jsonl"; write_jsonl([good[0], good[1], row, good[2]], f)
    out = tmp_path / "out"
    for flag in ("--pairs", "--heldout"):
        r = dpo_cli(*dpo_flags(work, flag, f), "--out", out)
        refused(r, out, repr(str(f)), "row 3", problem, command="dpo")
        if case != "identical replies": break  # the held-out file is read by the same code: one case shows it
