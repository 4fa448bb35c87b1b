"""Forward + backward speed of the course's GPT, and KV-cache decoding speed, on the current device.

Prints, for each shape: milliseconds per forward+backward step (median and fastest of the timed steps),
tokens per second, and the achieved GFLOP/s by `flops_per_token` (6N + 12 L T d), with the machine and versions.
No optimiser: this times the model alone (benchmarks/train.py times whole training steps). Never asserts on time.

Shapes:
  baby      nanoGPT's "baby GPT" for CPUs: 4 layers, 4 heads, 128 wide, 64 tokens, batch 12, vocabulary 65;
            in four variants: GPT-2 as is (tanh GELU, biases), exact GELU, no biases + exact GELU, Llama-style
  gpt2      GPT-2 small (12 x 12 x 768, vocabulary 50257) at batch x tokens 1 x 256, 4 x 256, 1 x 1024
  decode    generate 64 tokens after a 448-token prompt (baby model, block 512): the engine (KV cache) against
            recomputing the whole context at every step
  decode-124m  batch-1 decoding with the KV cache at GPT-2 small's shape (12 x 12 x 768, vocabulary 50257, block
            1024): --decode-tokens tokens (default 256) after a 64-token prompt, greedy, under --dtype's autocast
  decode-124m-graphs  the same decoding with the fixed-shape path (engine.StaticDecoder, vocabulary 50304), the
            weights in --dtype: on CUDA torch.compile(mode="reduce-overhead") makes each step one CUDA graph (an
            error if it cannot), elsewhere torch.compile's default mode; one warm-up call compiles, one is timed

  python benchmarks/model.py                       # everything, on the CPU
  python benchmarks/model.py --shapes baby --steps 100 --threads 2 1   # each shape at 2 threads, then at 1
  python benchmarks/model.py --device cuda --dtype bf16 --shapes gpt2 --gpt2-batches 16x1024
  python benchmarks/model.py --device cuda --dtype bf16 --shapes decode-124m --json runs/bench/decode.json
  python benchmarks/model.py --device cuda --dtype bf16 --shapes decode-124m-graphs --json runs/bench/graphs.json
"""
import argparse, os, platform, statistics, time
from dataclasses import replace

import torch

from chatgpt_course.core import get_device, machine_summary, precision_for, seed_everything
from chatgpt_course.files import write_json
from chatgpt_course.engine import Engine, SamplingParams, StaticDecoder
from chatgpt_course.model import GPT, GPTConfig, count_params, flops_per_token
from chatgpt_course.tokenizer import CharTokenizer

BABY = GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128)
BABY_VARIANTS = {"GPT-2 (tanh GELU, bias)": BABY, "exact GELU": replace(BABY, gelu_approx="none"),
                 "no bias, exact GELU": replace(BABY, bias=False, gelu_approx="none"),
                 "Llama-style (rmsnorm, rope, swiglu, no bias)": replace(BABY, norm="rmsnorm", pos="rope", mlp="swiglu", bias=False)}


def _sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def time_fwd_bwd(config, B, T, device, prec, steps, warmup):
    "Seconds per forward+backward step of GPT(config) on random (B, T) batches."
    seed_everything(0)
    model = GPT(config).to(device)
    x = torch.randint(0, config.vocab_size, (B, T), device=device)
    y = torch.randint(0, config.vocab_size, (B, T), device=device)
    times = []
    for i in range(warmup + steps):
        _sync(device); t = time.perf_counter()
        with prec.autocast(): _, loss = model(x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup: times.append(time.perf_counter() - t)
    return times


def report(name, config, B, T, times):
    med, best = statistics.median(times), min(times)
    tok = B * T
    gflops = flops_per_token(config, seq_len=T) * tok / med / 1e9
    print(f"  {name:<46} {B:>3} x {T:<5} {med*1e3:>9.1f} ms (fastest {best*1e3:.1f}) {tok/med:>10,.0f} tok/s {gflops:>8.1f} GFLOP/s")


def _tokenizer_without_end(vocab_size):
    "A tokenizer with no end token (so no row stops early) whose ids are all valid for the model: one CJK character each."
    return CharTokenizer("".join(chr(0x4E00 + i) for i in range(min(vocab_size, 4096))), special_tokens=())


@torch.inference_mode()
def greedy_recompute(model, prompt, new_tokens):
    "Greedy decoding without a cache: the whole context through the model at every step."
    ids = prompt
    for _ in range(new_tokens): ids = torch.cat([ids, model(ids, last_only=True)[0][:, -1].argmax(-1, keepdim=True)], 1)
    return ids[0, prompt.size(1):].tolist()


def time_decode(device, new_tokens=64, prompt_len=448):
    "KV-cached (the engine) against recomputing decoding of the baby model, with a check that both give the same tokens."
    config = replace(BABY, block_size=512)
    seed_everything(0)
    model = GPT(config).to(device).eval()
    engine = Engine(model, _tokenizer_without_end(config.vocab_size))
    prompt = torch.randint(0, config.vocab_size, (1, prompt_len), device=device)
    runs = {True: lambda p, n: engine.generate([p[0].tolist()], SamplingParams(max_new_tokens=n, temperature=0))[0].ids,
            False: lambda p, n: greedy_recompute(model, p, n)}
    out = {}
    for use_cache, run_ in runs.items():
        run_(prompt[:, :8], 4)  # warm-up
        _sync(device); t = time.perf_counter()
        ids = run_(prompt, new_tokens)
        _sync(device); out[use_cache] = (time.perf_counter() - t, ids)
    same = out[True][1] == out[False][1]
    print(f"  decode {new_tokens} tokens after a {prompt_len}-token prompt (baby model, block 512, greedy):")
    print(f"    with KV cache     {new_tokens / out[True][0]:>8.1f} tok/s")
    print(f"    recomputing       {new_tokens / out[False][0]:>8.1f} tok/s   speed-up {out[False][0] / out[True][0]:.1f}x; same tokens: {same}")


def time_decode_124m(device, prec, new_tokens=256, prompt_len=64) -> dict:
    "Batch-1 greedy decoding with the engine (KV cache) at GPT-2 small's shape (random weights: the speed is the same)."
    config = GPTConfig(vocab_size=50257)
    seed_everything(0)
    model = GPT(config).to(device).eval()
    engine = Engine(model, _tokenizer_without_end(config.vocab_size))
    prompt = torch.randint(0, 4096, (prompt_len,)).tolist()
    with prec.autocast():
        engine.generate([prompt], SamplingParams(max_new_tokens=min(8, new_tokens), temperature=0))  # warm-up: kernels, allocator
        _sync(device); t = time.perf_counter()
        ids = engine.generate([prompt], SamplingParams(max_new_tokens=new_tokens, temperature=0))[0].ids
        _sync(device); s = time.perf_counter() - t
    assert len(ids) == new_tokens
    row = dict(shape="gpt2-124m", batch=1, prompt=prompt_len, new_tokens=new_tokens, seconds=s, tokens_per_s=new_tokens / s,
               ms_per_token=1e3 * s / new_tokens, precision=prec.name)
    print(f"  decode {new_tokens} tokens after a {prompt_len}-token prompt, GPT-2 small shape ({count_params(config):,} "
          f"parameters), batch 1, KV cache, greedy, {prec.name}: {row['tokens_per_s']:,.1f} tok/s ({row['ms_per_token']:.2f} ms/token)")
    return row


def time_decode_124m_graphs(device, prec, new_tokens=256, prompt_len=64, config=GPTConfig(vocab_size=50304)) -> dict:
    "Batch-1 greedy decoding with StaticDecoder at GPT-2 small's shape: each step one CUDA graph on a GPU, weights in prec's dtype."
    seed_everything(0)
    model = GPT(config).to(device).eval().to(prec.dtype)  # bf16 weights: no casts inside the graph, half the bytes to read
    engine = Engine(model, _tokenizer_without_end(config.vocab_size))
    prompt = torch.randint(0, engine.tokenizer.n_vocab, (prompt_len,)).tolist()
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0)
    cuda = device.type == "cuda"
    decoder = StaticDecoder(engine, max_len=prompt_len + new_tokens, compile="reduce-overhead" if cuda else True)
    t = time.perf_counter()
    with torch._inductor.config.patch({"triton.cudagraph_or_error": cuda}):  # no CUDA graph: an error, not a slower figure
        decoder.generate([prompt], params)  # the warm-up: compiles the step and records its graph
    _sync(device); warm = time.perf_counter() - t
    _sync(device); t = time.perf_counter()
    ids = decoder.generate([prompt], params)[0].ids
    _sync(device); s = time.perf_counter() - t
    assert len(ids) == new_tokens
    how = "CUDA graphs (reduce-overhead)" if cuda else "torch.compile"
    row = dict(shape="gpt2-124m", batch=1, prompt=prompt_len, new_tokens=new_tokens, seconds=s, tokens_per_s=new_tokens / s,
               ms_per_token=1e3 * s / new_tokens, precision=f"{prec.name} weights", compile=how, warmup_s=warm)
    print(f"  decode {new_tokens} tokens after a {prompt_len}-token prompt, GPT-2 small shape ({count_params(config):,} "
          f"parameters), batch 1, StaticDecoder, {how}, greedy, {prec.name} weights: {row['tokens_per_s']:,.1f} tok/s "
          f"({row['ms_per_token']:.2f} ms/token; compile + first call {warm:.1f} s)")
    return row


def _loadavg():
    try: return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError): return "n/a"


def run(args, device, prec):
    if "baby" in args.shapes:
        print(f"baby GPT ({count_params(BABY):,} parameters), forward + backward, {args.steps} timed steps after 5 warm-up:")
        for name, cfg in BABY_VARIANTS.items():
            report(name, cfg, 12, 64, time_fwd_bwd(cfg, 12, 64, device, prec, args.steps, warmup=5))
    if "gpt2" in args.shapes:
        cfg = GPTConfig()
        print(f"GPT-2 small ({count_params(cfg):,} parameters), forward + backward, {args.gpt2_steps} timed steps after 1 warm-up:")
        for shape in args.gpt2_batches:
            B, T = map(int, shape.lower().split("x"))
            report("GPT-2 small", cfg, B, T, time_fwd_bwd(cfg, B, T, device, prec, args.gpt2_steps, warmup=1))
    if "decode" in args.shapes:
        time_decode(device)
    rows = []
    if "decode-124m" in args.shapes:
        rows.append(time_decode_124m(device, prec, args.decode_tokens))
    if "decode-124m-graphs" in args.shapes:
        rows.append(time_decode_124m_graphs(device, prec, args.decode_tokens))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    ap.add_argument("--dtype", default="fp32", help="fp32, bf16 (autocast) or auto")
    ap.add_argument("--threads", type=int, nargs="+", default=[None],
                    help="torch CPU thread counts to run everything at, in turn (default: torch's choice); on a busy "
                         "machine one thread can beat two, because every parallel region waits for the slowest thread")
    ap.add_argument("--shapes", nargs="+", default=["baby", "gpt2", "decode"], choices=["baby", "gpt2", "decode", "decode-124m", "decode-124m-graphs"])
    ap.add_argument("--steps", type=int, default=30, help="timed steps per baby variant")
    ap.add_argument("--gpt2-steps", type=int, default=2, help="timed steps per GPT-2 small shape (after one warm-up step)")
    ap.add_argument("--gpt2-batches", nargs="+", default=["1x256", "4x256", "1x1024"], help="BxT shapes for GPT-2 small")
    ap.add_argument("--decode-tokens", type=int, default=256, help="tokens generated by decode-124m and decode-124m-graphs")
    ap.add_argument("--json", default=None, help="write the decode-124m figures, with the machine line, to this JSON file")
    args = ap.parse_args()
    device = get_device(args.device)
    prec = precision_for(device, args.dtype)
    print(f"platform {platform.platform()} | precision {prec.name} | CPU load average {_loadavg()}")
    rows = []
    for n in args.threads:
        if n: torch.set_num_threads(n)
        print(machine_summary(device))
        rows += [dict(threads=torch.get_num_threads(), **row) for row in run(args, device, prec)]
    if args.json: write_json(args.json, {"machine": machine_summary(device), "rows": rows})


if __name__ == "__main__":
    main()
