"""Tokenizer benchmark: BPE training time and encoding throughput on tiny Shakespeare.

Prints (never asserts):
- seconds to train a byte-level BPE tokenizer to 512 and to 4,096 tokens on the training 90 % of tiny Shakespeare;
- encoding throughput in MB/s over the whole corpus (1.1 MB) for the pure-Python encoder (cold cache: a fresh
  tokenizer; warm: the same text again), the trained tokenizer exported to tiktoken, GPT-2 through the pure-Python
  encoder, and tiktoken's GPT-2 (single thread, encode_ordinary).
Each figure is the best of --repeat runs (the machine may be shared; the best run is the least disturbed one).

Usage: python benchmarks/tokenizer.py [--repeat 3]
"""
import argparse, platform, sys, time

import regex, tiktoken

from chatgpt_course.core import data_path, machine_summary
from chatgpt_course.tokenizer import BPETokenizer, gpt2_encoding, gpt2_tokenizer


def best_of(n, fn):
    "The least of n wall-clock timings of fn(), and its last result."
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="timings per figure; the best is printed")
    args = ap.parse_args(argv)
    text = data_path("tinyshakespeare.txt").read_text("utf-8")
    train = text[: int(0.9 * len(text))]
    mb = len(text.encode("utf-8")) / 1e6
    print(machine_summary("cpu"))
    print(f"python {platform.python_version()} | tiktoken {tiktoken.__version__} | regex {regex.__version__}")
    print(f"corpus: tiny Shakespeare, {mb:.2f} MB (training on the first 90 %: {len(train.encode()) / 1e6:.2f} MB)")
    print(f"best of {args.repeat} runs\n")

    print("BPE training (pure Python, incremental pair counts)")
    tok = None
    for vocab in (512, 4096):
        secs, tok = best_of(args.repeat, lambda: BPETokenizer.train(train, vocab))
        print(f"  vocab {vocab:>5,}: {secs:6.2f} s  ({tok.n_merges:,} merges)")

    print(f"\nEncoding the whole corpus ({mb:.2f} MB)")
    def rate(secs): return f"{mb / secs:8.2f} MB/s  ({secs:.3f} s)"
    merges = list(tok.merges)
    secs, ids = best_of(args.repeat, lambda: BPETokenizer(merges).encode(text))
    print(f"  pure Python, trained 4,096, cold cache : {rate(secs)}")
    warm = BPETokenizer(merges); warm.encode(text)
    secs, ids_warm = best_of(args.repeat, lambda: warm.encode(text))
    print(f"  pure Python, trained 4,096, warm cache : {rate(secs)}")
    enc = tok.to_tiktoken()
    secs, ids_tt = best_of(args.repeat, lambda: enc.encode_ordinary(text))
    print(f"  tiktoken export, trained 4,096         : {rate(secs)}")
    secs, gpt2_tok = best_of(1, gpt2_tokenizer)
    print(f"  (GPT-2 merges rebuilt from ranks in {secs:.2f} s)")
    gpt2_merges, gpt2_bytes = list(gpt2_tok.merges), gpt2_tok.byte_ids
    secs, g_ids = best_of(args.repeat, lambda: BPETokenizer(gpt2_merges, special_tokens=("<|endoftext|>",),
                                                            byte_ids=gpt2_bytes).encode(text))
    print(f"  pure Python, GPT-2, cold cache         : {rate(secs)}")
    g_enc = gpt2_encoding()
    secs, g_ids_tt = best_of(args.repeat, lambda: g_enc.encode_ordinary(text))
    print(f"  tiktoken GPT-2                         : {rate(secs)}")
    same = ids == ids_warm == ids_tt and g_ids == g_ids_tt
    print(f"\nids identical across encoders: {same} | tokens: trained 4,096 {len(ids):,}, GPT-2 {len(g_ids):,}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
