"""LoRA (06e) where notebook cells cannot test it well: the merged and unmerged outputs of an adapted GPT agree;
PEFT interop both ways (our adapter loaded by `peft` onto the base exported with `save_hf`, and an adapter trained by
`peft` for a few steps loaded into ours: the same logits within 1e-5); every bad input refused with one line that
names the value or the file (a rank below 1 or above the model's width, an adapter for another base by shape and by
name, a finished LoRA run resumed, a base whose chat tokens share one frozen embedding) with nothing written; and
`chatgpt-course sft --lora-rank 4` through the command line: a tiny run that `chat` answers from, whose adapter
(PEFT's format) on the base gives the merged checkpoint's logits, and a run killed with SIGKILL and resumed that ends
bitwise identical to a straight one. peft is a test dependency: its tests skip without it. Nothing is downloaded."""
import json, os

import pytest
import torch

from chatgpt_course.checkpoint import latest_checkpoint, load_trained
from chatgpt_course.core import CourseError
from chatgpt_course.lora import add_lora, load_peft, lora_layers, merge_lora, merged_model, save_peft, unmerge_lora
from chatgpt_course.model import GPT, GPTConfig, load_hf, save_hf
from _cli import TINY_SFT, course as cli, in_process, killed_and_resumed, refused, sft_flags as _sft_flags, sft_work, train_losses  # tests/_cli.py

LORA = ["--lora-rank", "4", "--lr", "1e-2"]  # after _cli's TINY_SFT
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' deprecation notes, as peft calls it
CFG = GPTConfig(block_size=32, vocab_size=120, n_layer=2, n_head=4, n_embd=32)  # the GPT-2 variant: Hugging Face can run it

def adapted(seed=0, model:GPT|None=None) -> tuple[GPT, torch.Tensor]:
    "A small GPT (or `model`) with rank-4 adapters whose B looks trained (not zero), and a batch of ids."
    torch.manual_seed(seed)
    m = add_lora((model or GPT(CFG)).eval(), 4, alpha=8)
    for layer in lora_layers(m).values(): torch.nn.init.normal_(layer.lora_B.weight, std=0.05)
    return m, torch.randint(0, CFG.vocab_size, (2, CFG.block_size))

def grid_step(t:torch.Tensor) -> torch.Tensor:
    "The distance from |t| to the next float up: one step of the float grid there."
    return torch.nextafter(t.abs(), torch.tensor(float("inf"))) - t.abs()

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    "A tiny base run with the chat tokens, a chat file and a held-out chat file."
    return sft_work(tmp_path_factory.mktemp("lora"))

def sft_flags(work, out, *more):
    "`sft` flags of a tiny LoRA run into `out` (None: no --out)."
    return _sft_flags(work, out, *LORA, *more)

# ---- the layer and the model

def test_merged_and_unmerged_outputs_are_equal():
    m, ids = adapted()
    with torch.no_grad():
        apart = m(ids)[0]
        w0 = {n: l.weight.clone() for n, l in lora_layers(m).items()}
        torch.testing.assert_close(merged_model(m)(ids)[0], apart, atol=1e-5, rtol=0)  # a merged copy
        assert all(torch.equal(l.weight, w0[n]) for n, l in lora_layers(m).items())  # ... leaves the model alone
        torch.testing.assert_close(merge_lora(m)(ids)[0], apart, atol=1e-5, rtol=0)  # merged in place
        unmerge_lora(m)
        torch.testing.assert_close(m(ids)[0], apart, atol=1e-5, rtol=0)
    for n, l in lora_layers(m).items():  # unmerged: back within one step of the float grid, entry by entry
        step = grid_step(torch.maximum(w0[n].abs(), (w0[n] + l.delta()).detach().abs()))
        assert ((l.weight - w0[n]).abs() <= step).all(), n

def test_bad_ranks():
    for rank, needle in ((0, "at least 1, got 0"), (-3, "at least 1, got -3"), (2.5, "got 2.5"), (33, "rank 33 is above the model's width n_embd 32")):
        with pytest.raises(CourseError, match="LoRA rank") as e: add_lora(GPT(CFG), rank)
        assert needle in str(e.value) and "\n" not in str(e.value)
    add_lora(GPT(CFG), 32)  # the width itself is the largest rank that means anything

# ---- PEFT, both ways

@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    pytest.importorskip("peft"); pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf") / "base"
    torch.manual_seed(0); save_hf(GPT(CFG), d)  # our GPT-2 variant, exported: config.json + model.safetensors
    return d

def test_our_adapter_loads_in_peft_with_the_same_logits(hf_base, tmp_path):
    from peft import PeftModel
    from transformers import GPT2LMHeadModel
    m, ids = adapted(seed=1, model=load_hf(hf_base))
    save_peft(m, tmp_path / "adapter", base=str(hf_base))
    assert sorted(os.listdir(tmp_path / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]
    theirs = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(hf_base), tmp_path / "adapter").eval()
    with torch.no_grad(): diff = (theirs(ids).logits - m(ids)[0]).abs().max().item()
    assert diff < 1e-5, diff

def test_an_adapter_trained_by_peft_loads_in_ours_with_the_same_logits(hf_base, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2LMHeadModel
    torch.manual_seed(2)
    ids = torch.randint(0, CFG.vocab_size, (2, CFG.block_size))
    peft_model = get_peft_model(GPT2LMHeadModel.from_pretrained(hf_base), LoraConfig(
        r=4, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True, task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3): peft_model(ids, labels=ids).loss.backward(); opt.step(); opt.zero_grad()
    peft_model.save_pretrained(tmp_path / "peft")
    with torch.no_grad(): theirs = peft_model.eval()(ids).logits
    ours = load_peft(load_hf(hf_base), tmp_path / "peft").eval()
    assert len(lora_layers(ours)) == 4 * CFG.n_layer  # "c_proj" matches attention's and the MLP's
    with torch.no_grad(): diff = (ours(ids)[0] - theirs).abs().max().item()
    assert diff < 1e-5, diff

def test_an_adapter_for_another_base_is_refused(tmp_path):
    m, _ = adapted()
    save_peft(m, tmp_path / "adapter")
    for other, needle in ((GPTConfig(block_size=32, vocab_size=120, n_layer=2, n_head=4, n_embd=64), "has shape (4, 32), but rank 4 on this model (n_embd 64) needs (4, 64)"),
                          (GPTConfig(block_size=32, vocab_size=120, n_layer=1, n_head=4, n_embd=32), "'transformer.h.1.attn.c_attn', which this 1-layer GPT does not have")):
        target = GPT(other)
        with pytest.raises(CourseError) as e: load_peft(target, tmp_path / "adapter")
        msg = str(e.value)
        assert needle in msg and str(tmp_path / "adapter" / "adapter_model.safetensors") in msg and "another base" in msg and "\n" not in msg
        assert not lora_layers(target) and not any(not p.requires_grad for p in target.parameters())  # untouched

# ---- chatgpt-course sft --lora-rank, end to end

def test_sft_lora_rank_then_chat_answers_from_the_merged_model(work, tmp_path, capsys):
    out = tmp_path / "lora"
    r = cli(*sft_flags(work, out, "--max-steps", "6", "--eval-every", "3")); assert r.returncode == 0, r.stderr
    assert "done at step 6" in r.stdout and " trained) from " in r.stderr
    model, tok, meta = load_trained(out)  # a plain GPT: the adapters merged into the last checkpoint
    assert not lora_layers(model) and meta["lora"] == {"rank": 4, "alpha": 16.0, "targets": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
                                                       "merged": True, "adapter": "adapter"}
    conf = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["r"] == 4 and conf["fan_in_fan_out"] is True
    base = load_trained(work / "base")[0]
    ids = torch.tensor([tok.encode("What is 2 plus 3?")])
    with torch.no_grad():
        before, after = base(ids)[0], model(ids)[0]
        diff = (load_peft(base, out / "adapter")(ids)[0] - after).abs().max().item()  # the adapter on the base: the merged model
    assert diff < 1e-5 and (after - before).abs().max() > 1e-3, diff  # ... and training changed it
    r = cli("chat", "--checkpoint", out, "--prompt", "What is 23 plus 19?", "--max-new-tokens", "8", "--seed", "0")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    weights = (latest_checkpoint(out) / "model.safetensors").read_bytes()
    r = in_process(capsys, "sft", "--out", out, "--resume", "--no-progress")  # finished: nothing to continue, and nothing changed
    assert r.returncode == 2 and "is a finished LoRA run" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (latest_checkpoint(out) / "model.safetensors").read_bytes() == weights

def test_sigkill_then_resume_of_a_lora_run_is_bitwise_identical(work, tmp_path):
    flags = ["--max-steps", "12", "--ckpt-every", "4", "--eval-every", "6", "--mix-rows", "1"]
    def no_adapter_yet(killed): assert not (killed / "adapter").exists()  # written when the run finishes
    straight, killed, _ = killed_and_resumed(sft_flags(work, None, *flags), tmp_path, 4, 12, after_kill=no_adapter_yet)
    same = ["ckpt-00000012/model.safetensors", "ckpt-00000008/model.safetensors", "ckpt-00000008/optimizer.pt", "adapter/adapter_model.safetensors"]
    for f in same: assert (straight / f).read_bytes() == (killed / f).read_bytes(), f
    assert train_losses(straight) == train_losses(killed)

def test_bad_lora_flags_are_refused_before_anything_is_written(work, tmp_path, capsys):
    out = tmp_path / "out"
    refused(in_process(capsys, *sft_flags(work, out, "--lora-rank", "33")), out, "LoRA rank 33 is above the model's width n_embd 32")
    refused(in_process(capsys, *sft_flags(work, out, "--lora-rank", "-1")), out, "lora_rank must be non-negative, got -1")
    refused(in_process(capsys, *sft_flags(work, out, "--lora-alpha", "0")), out, "lora_alpha must be positive")

def test_lora_from_gpt2_weights_is_refused_their_chat_tokens_share_one_embedding(work, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    hf = tmp_path / "tiny-gpt2"  # random weights, GPT-2's vocabulary, saved locally: nothing is downloaded
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, vocab_size=50257)).save_pretrained(hf)
    out = tmp_path / "out"
    refused(in_process(capsys, "sft", "--base", f"hf:{hf}", "--data", work / "chat.jsonl", "--out", out, *TINY_SFT, *LORA, "--mix-rows", "0"), out,
            "LoRA freezes the embeddings", "--lora-rank 0")
