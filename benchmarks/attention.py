"""Time and memory of attention against sequence length: the manual path (materialises the T x T scores) and the
fused path (F.scaled_dot_product_attention), forward or forward+backward, on the CPU or a GPU.

    python benchmarks/attention.py                          # CPU, fp32, GPT-2 small head shape
    python benchmarks/attention.py --device cuda --dtype bf16 --seq-lens 512,1024,2048,4096,8192 --backward

Memory is the peak of the bytes allocated during the call and alive at once (inputs excluded): on CUDA from
torch.cuda.max_memory_allocated, on the CPU from torch.profiler's allocation records. Prints figures; asserts nothing.
"""
import argparse, time

import torch
from torch.profiler import profile, ProfilerActivity

from chatgpt_course.core import get_device, machine_summary
from chatgpt_course.attention import manual_attention, fused_attention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

def sync(dev):
    if dev.type == "cuda": torch.cuda.synchronize(dev)

def cpu_peak_bytes(fn) -> int:
    "Peak bytes of CPU tensors allocated by fn() and alive at once, from the profiler's allocation records."
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof: fn()
    deltas = []  # an op's own allocations happen after it starts; its own frees (temporaries) by its end
    for e in prof.events():
        if e.self_cpu_memory_usage > 0: deltas.append((e.time_range.start, e.self_cpu_memory_usage))
        elif e.self_cpu_memory_usage < 0: deltas.append((e.time_range.end, e.self_cpu_memory_usage))
    live = peak = 0
    for _, d in sorted(deltas, key=lambda t: (t[0], -t[1])): live += d; peak = max(peak, live)
    return peak

def cuda_peak_bytes(fn, dev) -> int:
    sync(dev); torch.cuda.reset_peak_memory_stats(dev); base = torch.cuda.memory_allocated(dev)
    fn(); sync(dev)
    return torch.cuda.max_memory_allocated(dev) - base

def best_time(fn, dev, repeats) -> float:
    fn(); sync(dev)  # warm up (kernel selection, allocator)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); sync(dev); best = min(best, time.perf_counter() - t0)
    return best

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
    ap.add_argument("--dtype", default="fp32", choices=DTYPES, help="dtype of q, k, v")
    ap.add_argument("--batch", type=int, default=1, help="batch size B")
    ap.add_argument("--heads", type=int, default=12, help="heads nh")
    ap.add_argument("--head-dim", type=int, default=64, help="head size hs")
    ap.add_argument("--seq-lens", default="128,256,512,1024,2048", help="comma-separated sequence lengths T")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per point (the best is reported)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: leave PyTorch's default)")
    ap.add_argument("--backward", action="store_true", help="time forward + backward instead of forward only")
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    dev, dt = get_device(args.device), DTYPES[args.dtype]
    print(machine_summary(dev))
    print(f"B={args.batch} nh={args.heads} hs={args.head_dim} dtype={args.dtype} causal "
          f"{'forward+backward' if args.backward else 'forward'}")
    print(f"{'T':>6} | {'manual ms':>10} {'fused ms':>10} {'speed-up':>8} | {'manual MiB':>10} {'fused MiB':>10} {'T x T MiB':>10}")
    for T in [int(t) for t in args.seq_lens.split(",")]:
        q, k, v = (torch.randn(args.batch, args.heads, T, args.head_dim, device=dev, dtype=dt, requires_grad=args.backward)
                   for _ in range(3))
        row = {}
        for name, f in (("manual", manual_attention), ("fused", fused_attention)):
            def call():
                if args.backward:
                    f(q, k, v).sum().backward()
                else:
                    with torch.no_grad(): f(q, k, v)
            try:
                row[name + "_s"] = best_time(call, dev, args.repeats)
                row[name + "_b"] = cuda_peak_bytes(call, dev) if dev.type == "cuda" else cpu_peak_bytes(call) if dev.type == "cpu" else float("nan")
            except torch.OutOfMemoryError:
                row[name + "_s"] = row[name + "_b"] = float("nan")
                if dev.type == "cuda": torch.cuda.empty_cache()
        scores = args.batch * args.heads * T * T * torch.finfo(dt).bits // 8
        print(f"{T:>6} | {row['manual_s']*1e3:>10.2f} {row['fused_s']*1e3:>10.2f} {row['manual_s']/row['fused_s']:>7.1f}x | "
              f"{row['manual_b']/2**20:>10.1f} {row['fused_b']/2**20:>10.1f} {scores/2**20:>10.1f}")

if __name__ == "__main__":
    main()
