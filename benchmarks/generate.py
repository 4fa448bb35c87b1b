"""Decoding speed on the CPU: the course's engine against Hugging Face `generate` on the same weights, and against
recomputing the whole context at every step. Prints a tokens/s table with the machine and the versions; never
asserts on time.

In one run, for each model shape and each batch size (default 1 and 8), three ways to decode --new-tokens tokens
greedily after a --prompt-tokens prompt of random ids (every row the same length, so no padding anywhere):

  ours       chatgpt_course.engine.Engine.generate: prefill once, then one token per row per step through the KV
             cache, with the engine's whole per-step work (stop checks, incremental UTF-8 text decoding)
  HF         transformers.GPT2LMHeadModel.generate on the same weights (model.save_hf, then from_pretrained from a
             temporary folder): do_sample=False, use_cache=True, min_new_tokens = max_new_tokens = --new-tokens
  recompute  our model run on the whole context at every step, no cache (logits of the last position only)

tokens/s = batch x new tokens / wall time of the whole call (prefill included), the median of --repeats calls after
one short warm-up call; the three take turns within each repeat, so a change in the machine's load hits them alike. Every row decodes exactly --new-tokens tokens: HF's min_new_tokens holds back its end token,
and the engine is given the tokenizer with its end tokens hidden (an end token would finish a row early). Greedy
decoding of the same weights gives the same tokens three ways; the last column says whether it did.

Shapes (--shapes):
  cpu-tiny-gpt2    the cpu-tiny preset's shape (4 layers x 4 heads x 128 wide, vocabulary 2048, block 128) in GPT-2's
                   form: tanh GELU and biases. The preset itself uses exact GELU and no biases, which is not GPT-2;
                   this is the shape in the form Hugging Face's GPT-2 was made for
  cpu-tiny-preset  the cpu-tiny preset as it trains (exact GELU, no biases); HF runs it as activation "gelu" with zero biases
  gpt2             GPT-2 small: 12 x 12 x 768, vocabulary 50257, block 1024 (random weights, about 124 M parameters)

  python benchmarks/generate.py                                   # everything: 2 threads, 32 + 64 tokens, 3 repeats
  python benchmarks/generate.py --shapes gpt2 --new-tokens 32 --repeats 1   # a quicker look at GPT-2 small
  python benchmarks/generate.py --threads 1 --methods ours hf
"""
import argparse, os, statistics, tempfile, time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach for the hub

import torch
import transformers

from chatgpt_course.core import data_path, machine_summary, seed_everything
from chatgpt_course.engine import Engine, SamplingParams
from chatgpt_course.files import read_text
from chatgpt_course.model import GPT, GPTConfig, save_hf
from chatgpt_course.tokenizer import BPETokenizer, gpt2_tokenizer
from chatgpt_course.train import PRESETS

PRESET = PRESETS["cpu-tiny"].model
SHAPES = {"cpu-tiny-gpt2": replace(PRESET, gelu_approx="tanh", bias=True), "cpu-tiny-preset": PRESET, "gpt2": GPTConfig()}
METHODS = ("ours", "hf", "recompute")


class EndTokensHidden:
    "A tokenizer as the engine sees it, without end tokens: every row decodes exactly max_new_tokens (HF's min_new_tokens)."
    def __init__(self, tok):
        self.tok, self.name, self.n_vocab, self.special_tokens = tok, tok.name, tok.n_vocab, {}
    def decode_bytes(self, ids): return self.tok.decode_bytes(ids)


def tokenizer_for(config):
    "GPT-2's tokenizer for its vocabulary; for 2048, a BPE trained here on the start of tiny Shakespeare (about a second)."
    if config.vocab_size == 50257: return gpt2_tokenizer()
    return BPETokenizer.train(read_text(data_path("tinyshakespeare.txt"))[:200_000], config.vocab_size)


def median_seconds(fns:dict, repeats:int, warmup:dict) -> dict:
    "Name -> (median wall time of `repeats` calls of fns[name](), its last result), after one call of each warmup."
    # the methods take turns within each repeat, so a change in the machine's load falls on all of them alike
    for w in warmup.values(): w()
    times, outs = {m: [] for m in fns}, {}
    for _ in range(repeats):
        for m, fn in fns.items():
            t = time.perf_counter(); outs[m] = fn(); times[m].append(time.perf_counter() - t)
    return {m: (statistics.median(times[m]), outs[m]) for m in fns}


@torch.inference_mode()
def recompute(model, idx, new_tokens):
    "Greedy decoding that runs the model on the whole context at every step: no cache."
    P = idx.size(1)
    for _ in range(new_tokens):
        nxt = model(idx, last_only=True)[0][:, -1].argmax(-1, keepdim=True)  # (B, 1)
        idx = torch.cat([idx, nxt], dim=1)
    return idx[:, P:].tolist()


def bench_shape(name, config, args, hf_dir):
    "One row per batch size: tokens/s of each method, and whether their greedy tokens agree."
    seed_everything(0)
    model = GPT(config).eval()
    tok = tokenizer_for(config)
    eng = Engine(model, EndTokensHidden(tok))
    hf = None
    if "hf" in args.methods:
        save_hf(model, hf_dir / name)
        hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir / name).eval()
    eot = tok.eot_id
    rows = []
    for B in args.batches:
        g = torch.Generator().manual_seed(B)
        idx = torch.randint(0, eot, (B, args.prompt_tokens), generator=g)  # ordinary tokens only (ids below the specials)
        prompts, N = idx.tolist(), args.new_tokens
        def ours(n=N): return [c.ids for c in eng.generate(prompts, SamplingParams(max_new_tokens=n, temperature=0))]
        def hf_generate(n=N):
            with torch.inference_mode():
                out = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, use_cache=True, eos_token_id=eot, pad_token_id=eot)
            return out[:, args.prompt_tokens:].tolist()
        every = {"ours": ours, "hf": hf_generate, "recompute": lambda n=N: recompute(model, idx, n)}
        fns = {m: every[m] for m in args.methods}
        res = median_seconds(fns, args.repeats, {m: (lambda f=f: f(4)) for m, f in fns.items()})
        rate = {m: B * N / s for m, (s, _) in res.items()}
        same = {m: res[m][1] == res["ours"][1] for m in res if m != "ours" and "ours" in res}
        rows.append((B, rate, same))
        print(f"  {name:<16} {B:>5} " + " ".join(f"{rate[m]:>11,.1f}" if m in rate else f"{'-':>11}" for m in METHODS)
              + f" {_ratio(rate, 'ours', 'hf'):>8} {_ratio(rate, 'ours', 'recompute'):>8}   "
              + (", ".join(f"{m}: {'yes' if ok else 'NO'}" for m, ok in same.items()) or "-"), flush=True)
    return rows


def _ratio(rate, a, b): return f"{rate[a] / rate[b]:.2f}x" if a in rate and b in rate else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES), help="model shapes (default: all)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="decoders to time (default: all)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="batch sizes (default 1 8)")
    ap.add_argument("--prompt-tokens", type=int, default=32, help="prompt length (default 32)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per row (default 64)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per measurement; the median is shown (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every method (default 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error(); transformers.utils.logging.disable_progress_bar()
    print(machine_summary("cpu"))
    print("load average (1, 5, 15 min) at the start: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
          + f" on {os.cpu_count()} cores (other work on the machine slows every column)")
    print(f"torch {torch.__version__} | transformers {transformers.__version__} | {args.threads} threads | "
          f"prompt {args.prompt_tokens} + {args.new_tokens} new tokens, greedy, float32 | median of {args.repeats} after a warm-up")
    print(f"\n  {'shape':<16} {'batch':>5} {'ours tok/s':>11} {'HF tok/s':>11} {'recompute':>11} {'ours/HF':>8} {'ours/rec':>8}   same tokens as ours")
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for name in args.shapes: results[name] = bench_shape(name, SHAPES[name], args, Path(d))
    print("\nthe issue's targets (CPU):")
    for name, rows in results.items():
        by_b = {B: rate for B, rate, _ in rows}
        if 1 in by_b and "hf" in by_b[1] and "ours" in by_b[1]:
            target = ">= 2x on cpu-tiny" if name.startswith("cpu-tiny") else ">= 1x (no slower) on GPT-2 small"
            print(f"  {name:<16} ours / HF at batch 1: {by_b[1]['ours'] / by_b[1]['hf']:.2f}x   (target {target})")
        if 1 in by_b and 8 in by_b and "ours" in by_b[1]:
            print(f"  {name:<16} ours, batch-8 aggregate / batch 1: {by_b[8]['ours'] / by_b[1]['ours']:.2f}x   (target >= 5x)")


if __name__ == "__main__":
    main()
