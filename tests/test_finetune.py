"""Supervised fine-tuning end to end, through the command line where a user would use it: the loss mask of multi-turn
rows, a micro-batch with nothing to learn, SFT killed with SIGKILL and resumed (bitwise identical to an uninterrupted
run, and so is one whose run.json predates the LoRA and safety fields), every bad input refused with a one-line
message that names the file, the row and the problem (and nothing written), conversations longer than the context
cut by whole exchanges, a start from GPT-2 weights in Hugging Face format (a small random GPT-2 saved locally, never
downloaded), and `chat` answering from the fine-tuned model. `--data synthetic` with a `safety_share`: that share of
01d's safety chats, at seeded places (the same every time), for training and held-out rows alike; a file's rows used
as they are; a share outside [0, 1) refused in one line.
All runs are tiny CPU models."""
import json, math

import pytest
import torch

from chatgpt_course.chat_data import make_chat_dataset
from chatgpt_course.checkpoint import load_trained
from chatgpt_course.files import write_jsonl
from chatgpt_course.core import CourseError
from chatgpt_course.finetune import ChatBatches, SFTConfig, check_sft_config, encode_chats, load_chats, pad_batch, synthetic_chats
from chatgpt_course.model import GPT, GPTConfig
from chatgpt_course.optim import IGNORE_INDEX, make_optimizer, train_step
from chatgpt_course.core import precision_for
from chatgpt_course.safety_data import safety_chat_rows
from chatgpt_course.tokenizer import gpt2_tokenizer
from _cli import TINY_SFT, course as cli, in_process, killed_and_resumed, refused, sft_flags, sft_work, tiny_base_flags, train_losses  # tests/_cli.py

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    "A tiny base run with the chat tokens, a chat file and a held-out chat file."
    return sft_work(tmp_path_factory.mktemp("sft"))

# ---- the loss mask

def test_the_mask_covers_exactly_the_assistant_replies_and_their_end():
    tok = gpt2_tokenizer(chat=True)
    rows = [r for r in make_chat_dataset(40, seed=3) if len(r["tags"]["items"]) > 1][:8]  # multi-turn rows
    assert len(rows) == 8
    ex = encode_chats(rows, tok, 10_000)
    x, y = pad_batch(list(zip(ex.ids, ex.masks)), tok.eot_id)
    for r, row in enumerate(rows):
        learned = [t for t in y[r].tolist() if t != IGNORE_INDEX]
        want = "".join(m["content"] + "<|end|>" for m in row["messages"] if m["role"] == "assistant")
        assert tok.decode(learned) == want  # every assistant token and its <|end|>, in order, and nothing else
        seen = tok.decode([t for t, target in zip(x[r].tolist(), y[r].tolist()) if target == IGNORE_INDEX])
        assert all(m["content"] in seen for m in row["messages"] if m["role"] != "assistant")  # system and user turns only read

def test_a_micro_batch_with_nothing_to_learn_adds_nothing_and_no_nan():
    tok = gpt2_tokenizer(chat=True)
    ex = encode_chats(make_chat_dataset(8, seed=1), tok, 10_000)
    x, y = pad_batch(list(zip(ex.ids, ex.masks)), tok.eot_id)
    empty = (x[:3], torch.full_like(y[:3], IGNORE_INDEX))  # e.g. rows whose replies were all cut away
    cfg = GPTConfig(block_size=256, vocab_size=50304, n_layer=1, n_head=2, n_embd=16)
    def step(batches):
        torch.manual_seed(0); m = GPT(cfg); opt = make_optimizer(m, 1e-3, 0.0, (0.9, 0.95))
        prec = precision_for("cpu", "fp32")
        r = train_step(m, batches, opt, prec, prec.scaler(), 1.0, 1)
        return r, torch.cat([p.detach().flatten() for p in m.parameters()])
    (r1, w1), (r2, w2) = step([(x, y)]), step([(x, y), empty])
    assert r1["loss"] == pytest.approx(r2["loss"]) and r1["targets"] == r2["targets"]
    assert torch.allclose(w1, w2, atol=1e-7)
    r3, w3 = step([empty])
    torch.manual_seed(0); w0 = torch.cat([p.detach().flatten() for p in GPT(cfg).parameters()])
    assert r3["loss"] is None and r3["targets"] == 0 and torch.equal(w3, w0) and not torch.isnan(w3).any()

def test_the_loader_resumes_exactly_and_mixes_pretraining_windows():
    tok = gpt2_tokenizer(chat=True)
    ex = encode_chats(make_chat_dataset(30, seed=2), tok, 10_000)
    text = torch.randint(0, 50000, (5000,)).numpy()
    a = ChatBatches(ex, 4, accum=2, seed=5, text=text, mix_rows=2)
    for _ in range(9): a.next()  # past the end of the first epoch (30 conversations, 8 a step)
    sd = a.state_dict()
    b = ChatBatches(ex, 4, accum=2, seed=5, text=text, mix_rows=2); b.load_state_dict(sd)
    for _ in range(3):
        for (xa, ya), (xb, yb) in zip(a.next(), b.next()): assert torch.equal(xa, xb) and torch.equal(ya, yb)
    (x, y), _ = a.next()
    assert x.shape[0] == 4 + 2 and (y[4:] != IGNORE_INDEX).all()  # the mixed-in windows: every target learned
    assert a.epochs > 1

# ---- the safety share of the synthetic conversations

@pytest.mark.parametrize("split, n", [("train", 200), ("heldout", 40)])
def test_the_synthetic_chats_hold_the_safety_share_in_a_seeded_order(split, n):
    tok = gpt2_tokenizer(chat=True)
    rows = synthetic_chats(n, split, 0.1)
    safety = [r for r in rows if "safety" in r["tags"]]
    assert len(safety) == round(0.1 * n) and {r["tags"]["split"] for r in rows} == {split}
    assert safety == safety_chat_rows(len(safety), seed=0, split=split)  # 01d's chats of the same split
    assert [r for r in rows if "safety" not in r["tags"]] == make_chat_dataset(n - len(safety), seed=0, split=split)  # 01c's, in order
    assert synthetic_chats(n, split, 0.1) == rows and synthetic_chats(n, split, 0.0) == make_chat_dataset(n, seed=0, split=split)
    ex = load_chats("synthetic", tok, 10_000, (n, split), safety_share=0.1)
    want = encode_chats(rows, tok, 10_000)
    assert ex.ids == want.ids and ex.masks == want.masks  # what sft trains on: the same rows, in the same places
    assert load_chats("synthetic", tok, 10_000, (n, split), safety_share=0.1).ids == ex.ids
    safety_ids = {tuple(i) for i in encode_chats(safety, tok, 10_000).ids}
    assert sum(tuple(i) in safety_ids for i in ex.ids) == len(safety)

def test_a_file_is_used_as_it_is_whatever_the_share(tmp_path):
    tok = gpt2_tokenizer(chat=True)
    f = tmp_path / "chat.jsonl"; rows = make_chat_dataset(20, seed=4); write_jsonl(rows, f)
    assert load_chats(f, tok, 10_000, safety_share=0.5).ids == encode_chats(rows, tok, 10_000).ids

@pytest.mark.parametrize("share", [1.0, 1.5, -0.1, math.nan])
def test_a_bad_safety_share_is_refused_in_one_line(tmp_path, share):
    with pytest.raises(CourseError) as e: check_sft_config(SFTConfig(base=str(tmp_path), data="synthetic", safety_share=share))
    assert "--safety-share" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CourseError, match="safety_share"): synthetic_chats(10, "train", share)

# ---- runs through the command line

def test_sigkill_then_resume_is_bitwise_identical(work, tmp_path):
    flags = ["--max-steps", "24", "--ckpt-every", "4", "--eval-every", "8", "--mix-rows", "1"]
    straight, killed, _ = killed_and_resumed(sft_flags(work, None, *flags), tmp_path, 8, 24)
    for f in ("model.safetensors", "optimizer.pt"):
        assert (straight / "ckpt-00000024" / f).read_bytes() == (killed / "ckpt-00000024" / f).read_bytes(), f
    assert train_losses(straight) == train_losses(killed)

def test_an_sft_run_saved_before_the_lora_and_safety_fields_still_resumes(work, tmp_path):
    "A run.json from before lora_rank, lora_alpha and safety_share: `sft --resume` reads them as their defaults and finishes the run."
    def as_saved_before(killed):
        rec = json.loads((killed / "run.json").read_text())
        for k in ("lora_rank", "lora_alpha", "safety_share"): del rec["config"][k]
        (killed / "run.json").write_text(json.dumps(rec))
    flags = ["--max-steps", "16", "--ckpt-every", "4", "--eval-every", "8"]
    straight, killed, _ = killed_and_resumed(sft_flags(work, None, *flags), tmp_path, 4, 16, after_kill=as_saved_before)
    assert "lora_rank" not in json.loads((killed / "run.json").read_text())["config"]  # the resumed run kept the old record
    assert (straight / "ckpt-00000016" / "model.safetensors").read_bytes() == (killed / "ckpt-00000016" / "model.safetensors").read_bytes()
    assert train_losses(straight) == train_losses(killed)

def test_sft_then_chat_answers_from_the_fine_tuned_model(work, tmp_path):
    out = tmp_path / "chat"
    r = cli(*sft_flags(work, out, "--max-steps", "6", "--eval-every", "3")); assert r.returncode == 0, r.stderr
    assert "done at step 6" in r.stdout and (out / "loss.png").exists()
    recs = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    ev = [r for r in recs if r["kind"] == "eval"]
    assert ev and all("val_loss" in e and "text_bpb" in e for e in ev)  # held-out replies, and forgetting on the base's text
    r = cli("chat", "--checkpoint", out, "--prompt", "What is 23 plus 19?", "--max-new-tokens", "8", "--seed", "0")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    model, tok, meta = load_trained(out)
    assert meta["config"]["base"] == str(work / "base") and "<|assistant|>" in tok.special_tokens

# ---- bad input: one line that names the file, the row and the problem; nothing written

GOOD = {"messages": [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5."}]}
BAD_ROWS = {
    "wrong role": ({"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]}, "message 1 must be"),
    "empty content": ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}, "message 1 (assistant) has empty content"),
    "no assistant turn": ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}, "end with the assistant"),
}

@pytest.mark.parametrize("case", BAD_ROWS)
def test_chat_rows_that_fail_validation(work, tmp_path, capsys, case):
    row, problem = BAD_ROWS[case]
    f = tmp_path / "bad.jsonl"; write_jsonl([GOOD, GOOD, row, GOOD], f)
    out = tmp_path / "out"
    refused(in_process(capsys, "sft", "--base", work / "base", "--data", f, "--out", out, *TINY_SFT), out, str(f), "row 3", problem)

def test_a_bad_safety_share_on_the_command_line(work, tmp_path, capsys):
    out = tmp_path / "out"
    refused(in_process(capsys, "sft", "--base", work / "base", "--data", "synthetic", "--safety-share", "1", "--out", out, *TINY_SFT), out, "--safety-share", "got 1.0")

def test_a_base_without_the_chat_tokens(work, tmp_path, capsys):
    char = tmp_path / "char"
    r = cli("pretrain", *tiny_base_flags(n_layer=2, max_steps=1), "--tokenizer", "char", "--vocab-size", "66", "--out", char); assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    refused(in_process(capsys, "sft", "--base", char, "--data", work / "chat.jsonl", "--out", out, *TINY_SFT), out, str(char), "no chat tokens")

def test_pretraining_tokens_from_another_tokenizer(work, tmp_path, capsys):
    other = tmp_path / "other"  # the same recipe with a bigger vocabulary: other merges, other ids
    r = cli("pretrain", *tiny_base_flags(n_layer=2, max_steps=1), "--tokenizer", "bpe:310", "--out", other); assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    refused(in_process(capsys, *sft_flags(work, out, "--text-tokens", other / "data")), out, str(other / "data" / "train.bin"), "differs from the base model's tokenizer")

def test_long_conversations_are_cut_by_whole_exchanges(work, tmp_path, capsys):
    long = {"messages": [{"role": "system", "content": "Be brief."}] + [m for k in range(12) for m in
            ({"role": "user", "content": f"Question number {k}, asked at some length to take room?"}, {"role": "assistant", "content": f"Answer {k}."})]}
    f = tmp_path / "long.jsonl"; write_jsonl([GOOD] * 3 + [long], f)
    out = tmp_path / "out"
    r = cli("sft", "--base", work / "base", "--data", f, "--heldout", "", "--out", out, *TINY_SFT, "--seq-len", "64", "--max-steps", "1")
    assert r.returncode == 0, r.stderr
    assert "4 conversations, 4 kept; 1 cut to fit" in r.stderr, r.stderr
    huge = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    f2 = tmp_path / "huge.jsonl"; write_jsonl([huge], f2); out2 = tmp_path / "out2"
    refused(in_process(capsys, "sft", "--base", work / "base", "--data", f2, "--heldout", "", "--out", out2, *TINY_SFT, "--seq-len", "64"), out2, str(f2), "fits in 65 tokens")

def test_a_start_from_gpt2_weights_in_hugging_face_format(work, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = tmp_path / "tiny-gpt2"  # random weights, GPT-2's vocabulary, saved locally: nothing is downloaded
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, vocab_size=50257)
    torch.manual_seed(0); transformers.GPT2LMHeadModel(cfg).save_pretrained(hf)
    out = tmp_path / "out"
    r = cli("sft", "--base", f"hf:{hf}", "--data", work / "chat.jsonl", "--out", out, *TINY_SFT, "--max-steps", "2", "--mix-rows", "0")  # no pretraining text to mix
    assert r.returncode == 0, r.stderr
    model, tok, meta = load_trained(out)
    assert tok.name == "gpt2-chat" and model.config.vocab_size >= 50261 and meta["tokenizer"] == "gpt2-chat"
    r = cli("chat", "--checkpoint", out, "--prompt", "Hi", "--max-new-tokens", "4", "--seed", "0"); assert r.returncode == 0, r.stderr
