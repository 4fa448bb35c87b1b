"""Training throughput and time-to-quality of the pretraining stage, on the current device.

Prints, for each configuration: milliseconds per optimiser step, tokens per second and MFU (against
`optim.peak_flops`: datasheet bf16 peaks on H100/H200/A100, a documented estimate on CPU), with the machine and
versions. Never asserts on time.

Configurations:
  baby      nanoGPT's "baby GPT" for CPUs (4 layers, 4 heads, 128 wide, 64 tokens, batch 12, char vocab 65):
            the CPU step-time comparison (nanoGPT's model: about 35 ms/step with 2 threads on the course's 2-core machine)
  cpu-tiny  the cpu-tiny preset's model and batch
  gpu-124m  GPT-2 small, bf16, torch.compile, fused AdamW, 16 x 1024 per micro-batch (needs a GPU)

On the CPU, baby and cpu-tiny are timed with both GELU forms: "tanh" (GPT-2's, which its weights need) and "none"
(the exact erf GELU that nanoGPT's nn.GELU() computes and the from-scratch presets use); gpu-124m with its preset's
(tanh) unless --gelu says otherwise. On the CPU each configuration is also timed with `BareGPT`, nanoGPT's
architecture written with nothing else (no input checks, no KV-cache plumbing), the same GELU, optimiser and
batches: the course's model should be no slower. All closures of a configuration take turns step by step. The
time per step is the median over the timed steps (the minimum is shown too: on a shared machine it is the better
guide).

  python benchmarks/train.py                         # baby and cpu-tiny on the CPU (2 threads), 30 timed steps
  python benchmarks/train.py --gelu none            # only the exact GELU
  python benchmarks/train.py --configs gpu-124m --steps 20 --json runs/bench/train.json   # on a GPU, figures also as JSON
  python benchmarks/train.py --nanogpt-dir ~/nanoGPT # also time nanoGPT's own model.py (a local checkout) on baby
  python benchmarks/train.py --time-to-quality       # cpu-tiny for --minutes (default 10): when did validation pass
                                                     # nanoGPT's baby GPT (2.71 bits/byte) and the 2.30 bits/byte target?
"""
import argparse, dataclasses, importlib.util, math, statistics, tempfile, time
from pathlib import Path

import numpy as np
import torch

from chatgpt_course.core import get_device, machine_summary, precision_for, seed_everything
from chatgpt_course.files import write_json
from chatgpt_course.model import GPT, GPTConfig, flops_per_token
from chatgpt_course.tokenizer import load_tokenizer
from chatgpt_course.batches import RandomWindows
from chatgpt_course.optim import make_optimizer, train_step, peak_flops, mfu
from chatgpt_course.train import PRESETS, TrainConfig, train, read_log

BABY = TrainConfig(model=GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False,
                                   gelu_approx="none"),  # exact GELU, as nanoGPT's nn.GELU() (--gelu times tanh too)
                   seq_len=64, batch_size=12, lr=1e-3, fused_adamw=True)  # our default optimiser on CPU (cpu-tiny's)
CONFIGS = {"baby": BABY, "cpu-tiny": PRESETS["cpu-tiny"], "gpu-124m": dataclasses.replace(PRESETS["gpu-124m"], batch_tokens=0)}
GELUS = ("tanh", "none")  # GPT-2's tanh approximation; the exact erf form
BABY_BPB = 1.88 / math.log(2)  # nanoGPT's baby GPT: val loss 1.88 nats/char after 2,000 steps = 2.71 bits per byte

def _tokens(vocab_size:int) -> np.ndarray:
    "Tiny Shakespeare as character ids (ids folded into the vocabulary: throughput does not depend on the text)."
    return np.array(load_tokenizer("char").encode(Path(__file__).resolve().parents[1].joinpath("data/tinyshakespeare.txt").read_text()),
                    dtype=np.int64) % vocab_size

def ours_step(cfg:TrainConfig, device):
    "One optimiser step of the course's train_step on `cfg` (a closure; compiled on CUDA if the config says so)."
    seed_everything(0)
    model = GPT(cfg.model).to(device); prec = precision_for(device, cfg.dtype)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), fused=cfg.fused_adamw)
    run = torch.compile(model) if cfg.compile and device.type == "cuda" else model
    ld = RandomWindows(_tokens(cfg.model.vocab_size), cfg.batch_size, cfg.seq_len, seed=0, device=device)
    scaler = prec.scaler()
    return lambda: train_step(run, ld.next(), opt, prec, scaler, cfg.grad_clip)

class BareGPT(torch.nn.Module):
    "nanoGPT's architecture with nothing else (no input checks, no KV cache, no options but the GELU form): the overhead-free reference."
    def __init__(self, m:GPTConfig):
        super().__init__()
        nn, C = torch.nn, m.n_embd
        self.n_head, self.gelu = m.n_head, m.gelu_approx  # F.gelu's approximate= takes the same "tanh" / "none"
        self.wte, self.wpe = nn.Embedding(m.vocab_size, C), nn.Embedding(m.block_size, C)
        self.blocks = nn.ModuleList([nn.ModuleDict(dict(ln_1=nn.LayerNorm(C, bias=m.bias), c_attn=nn.Linear(C, 3 * C, bias=m.bias),
            c_proj=nn.Linear(C, C, bias=m.bias), ln_2=nn.LayerNorm(C, bias=m.bias), c_fc=nn.Linear(C, 4 * C, bias=m.bias),
            mlp_proj=nn.Linear(4 * C, C, bias=m.bias))) for _ in range(m.n_layer)])
        self.ln_f, self.lm_head = nn.LayerNorm(C, bias=m.bias), nn.Linear(C, m.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
    def forward(self, idx, targets):
        F = torch.nn.functional; B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.blocks:
            q, k, v = b["c_attn"](b["ln_1"](x)).view(B, T, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)  # each (B, nh, T, hs)
            x = x + b["c_proj"](F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1))
            x = x + b["mlp_proj"](F.gelu(b["c_fc"](b["ln_2"](x)), approximate=self.gelu))
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

def _plain_step(model, opt, ld, grad_clip):
    def step():
        (x, y), = ld.next()
        model(x, y)[1].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step(); opt.zero_grad(set_to_none=True)
    return step

def bare_step(cfg:TrainConfig, fused:bool):
    "One step of BareGPT with the same AdamW groups, clipping and batches (CPU)."
    seed_everything(0)
    model = BareGPT(cfg.model); opt = make_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), fused=fused)
    return _plain_step(model, opt, RandomWindows(_tokens(cfg.model.vocab_size), cfg.batch_size, cfg.seq_len, seed=0), cfg.grad_clip)

def nanogpt_step(nanogpt_dir:str, cfg:TrainConfig):
    "One step of nanoGPT's own model.py (from a local checkout) with its configure_optimizers, on the CPU."
    spec = importlib.util.spec_from_file_location("nanogpt_model", Path(nanogpt_dir) / "model.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    m = cfg.model
    seed_everything(0)
    model = mod.GPT(mod.GPTConfig(block_size=m.block_size, vocab_size=m.vocab_size, n_layer=m.n_layer, n_head=m.n_head,
                                  n_embd=m.n_embd, dropout=m.dropout, bias=m.bias))
    opt = model.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), "cpu")
    return _plain_step(model, opt, RandomWindows(_tokens(m.vocab_size), cfg.batch_size, cfg.seq_len, seed=0), cfg.grad_clip)

def interleaved(steps:dict, n:int, warmup:int, device) -> dict:
    "Seconds per step of each closure, taking turns step by step so that a shared machine's load hits all alike."
    times = {k: [] for k in steps}
    for i in range(warmup + n):
        for k, f in steps.items():
            t = time.perf_counter(); f()
            if device.type == "cuda": torch.cuda.synchronize()
            if i >= warmup: times[k].append(time.perf_counter() - t)
    return times

def report(name:str, cfg:TrainConfig, times:list[float], device) -> dict:
    "Print one configuration's figures; return them as a row (for --json)."
    ms = statistics.median(times) * 1e3
    tps = cfg.batch_size * cfg.seq_len / (ms / 1e3)
    peak, how = peak_flops(device)
    u = mfu(flops_per_token(cfg.model, cfg.seq_len), tps, peak)
    m = cfg.model
    print(f"{name:<38} {m.n_layer}L {m.n_head}H {m.n_embd}d T={cfg.seq_len} B={cfg.batch_size} V={m.vocab_size:<6} "
          f"{ms:8.1f} ms/step (min {min(times) * 1e3:.1f})  {tps:>10,.0f} tokens/s  MFU {'n/a' if u is None else f'{u:.1%}'}")
    return dict(name=name, gelu=m.gelu_approx, ms_per_step=ms, min_ms_per_step=min(times) * 1e3, tokens_per_s=tps,
                mfu=u, peak=how, steps=len(times))

def time_to_quality(minutes:float, threads:int):
    "Train the cpu-tiny preset for `minutes` and report when validation passed nanoGPT's baby GPT and the 2.30 bpb target."
    cfg = dataclasses.replace(PRESETS["cpu-tiny"], max_minutes=minutes, threads=threads)
    out = Path(tempfile.mkdtemp()) / "cpu-tiny"
    print(f"time to quality: chatgpt-course pretrain --preset cpu-tiny --max-minutes {minutes:g} --threads {threads} (out {out})")
    res = train(cfg, out, progress=False)
    evals = [r for r in read_log(out / "log.jsonl") if r["kind"] == "eval"]
    for r in evals: print(f"  step {r['step']:>5}  {r['time_s']:7.1f} s  val {r['val_loss']:.4f} nats/token  {r['val_bpb']:.4f} bits/byte")
    for target, what in ((BABY_BPB, "nanoGPT baby GPT (1.88 nats = 2.71 bpb)"), (2.30, "the 2.30 bpb target")):
        hit = next((r for r in evals if r["val_bpb"] <= target), None)
        print(f"  passed {what}: " + (f"at step {hit['step']}, {hit['time_s']:.0f} s (wall clock, evaluations included)" if hit else "not within the budget"))
    print(f"  final: step {res['step']}, {res.get('val_bpb', float('nan')):.4f} bits/byte")

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=None, choices=sorted(CONFIGS), help="default: baby cpu-tiny on CPU, gpu-124m on GPU")
    p.add_argument("--device", default="auto"); p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30); p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--gelu", nargs="+", default=None, choices=GELUS,
                   help="GELU forms to time (default: both for baby and cpu-tiny, the preset's for gpu-124m)")
    p.add_argument("--json", default=None, help="also write the figures, with the machine line, to this JSON file")
    p.add_argument("--nanogpt-dir", default=None, help="a local nanoGPT checkout: also time its model.py on the baby config (exact GELU)")
    p.add_argument("--time-to-quality", action="store_true"); p.add_argument("--minutes", type=float, default=10.0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = get_device(a.device)
    print(machine_summary(device)); print(f"numpy {np.__version__}; MFU against {peak_flops(device)[1]}")
    if a.time_to_quality: return time_to_quality(a.minutes, a.threads)
    configs = a.configs or (["gpu-124m"] if device.type == "cuda" else ["baby", "cpu-tiny"])
    rows = []
    for name in configs:
        if name == "gpu-124m" and device.type != "cuda": print("gpu-124m: skipped (needs a CUDA GPU)"); continue
        base = CONFIGS[name]
        if device.type == "cpu": base = dataclasses.replace(base, dtype="fp32", compile=False)
        gelus = a.gelu or ((base.model.gelu_approx,) if name == "gpu-124m" else GELUS)
        cfgs, steps = {}, {}
        for g in gelus:
            cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, gelu_approx=g))
            ours = f"{name} gelu={g} (chatgpt_course)"; cfgs[ours] = cfg; steps[ours] = ours_step(cfg, device)
            if device.type == "cpu":
                for fused, what in ((False, "AdamW"), (True, "fused AdamW")):  # plain AdamW: nanoGPT's choice on CPU
                    label = f"{name} gelu={g} (bare, {what})"; cfgs[label] = cfg; steps[label] = bare_step(cfg, fused=fused)
                if name == "baby" and g == "none" and a.nanogpt_dir:  # nanoGPT's MLP is nn.GELU(): exact
                    label = "baby gelu=none (nanoGPT model.py)"; cfgs[label] = cfg; steps[label] = nanogpt_step(a.nanogpt_dir, cfg)
        for label, times in interleaved(steps, a.steps, a.warmup, device).items():
            rows.append(dict(config=name, **report(label, cfgs[label], times, device)))
    if "baby" in configs and not a.nanogpt_dir:
        print("reference: nanoGPT's model (exact GELU) at the baby config, about 35 ms/step with 2 threads on the course's "
              "2-core machine (pass --nanogpt-dir to time it here side by side)")
    if a.json: write_json(a.json, {"machine": machine_summary(device), "threads": a.threads, "steps": a.steps,
                                   "warmup": a.warmup, "rows": rows})

if __name__ == "__main__":
    main()
