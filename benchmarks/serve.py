"""A load test of the server: `chatgpt-course serve` started here on a checkpoint, on the loopback address only, and
the official `openai` client sending chat completions (streamed, with usage) from 1, 4 and 16 concurrent streams.
Prints, for each concurrency, the aggregate tokens/s, p50 and p95 time to first token, p50 and p95 per-token latency,
and the errors, with the machine and the configuration; writes the same figures as one flat JSON object (07e's report
reads a run directory's `serving.json`). Bounded in count and in time; never asserts on time.

  python benchmarks/serve.py --checkpoint runs/sft --json runs/sft/serving.json   # a chat model you trained
  python benchmarks/serve.py --train-tiny runs/bench                              # makes a cpu-chat model first
  python benchmarks/serve.py --train-tiny runs/bench --requests 2 --max-tokens 16 # a smoke run: seconds

What is measured, per concurrency C (--streams, default 1 4 16): C client threads each send --requests chat
completions one after another (stream=True, stream_options.include_usage, temperature 0, max_tokens --max-tokens),
the prompts being 07's held-out chat questions (chat_data.make_eval_set) in turn; no new request starts after
--max-seconds. Warm-up requests (two alone, then four together) come first and are not counted.

  aggregate tokens/s   completion tokens of every request (from usage) / wall time from the first send to the last reply
  time to first token  from sending a request to its first chunk with content
  per-token latency    per request, (time of its last content chunk - its first) / (completion tokens - 1)
  errors               requests that raised (an HTTP error, a refused connection, a broken stream) or got no usage

--train-tiny DIR trains the course's CPU chat model shape (`pretrain --preset cpu-chat` then `sft --preset cpu-chat`:
4 layers, width 128, context 256, a 2,048-token BPE) for --train-steps steps each, through the command line, and serves
DIR/sft. Serving speed depends on the shape, not on how long it trained; the replies' lengths do (an end token ends a
reply), so the table says how many tokens the replies had. The targets of issue 14 for this model on 2 cores: 16 streams
give >= 4x the aggregate tokens/s of one, p95 time to first token < 1 s at 16 streams, zero errors.

The server's model runs on --threads threads (OMP_NUM_THREADS; default 1). On 2 cores that share the server's HTTP work
and this client, one thread does more: the model's matrices are too small to gain much from a second thread, and the
second OpenMP thread's spin-waiting takes CPU from the HTTP side. Try --threads 2 to see it; pin the server to cores
with taskset where the machine has more than it should use.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, threading, time
from pathlib import Path

import httpx
from openai import OpenAI

from chatgpt_course.chat_data import make_eval_set
from chatgpt_course.core import machine_summary

RUN_CLI = "import sys; from chatgpt_course.cli import main; sys.exit(main())"


def course(*args, threads:int) -> None:
    "`chatgpt-course ARGS` in a fresh process; stops the benchmark with the command's error if it fails."
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-c", RUN_CLI, *map(str, args)], capture_output=True, text=True, env=env)
    if r.returncode: sys.exit(f"chatgpt-course {args[0]} failed:\n{r.stderr[-2000:]}")


def train_tiny(out:Path, steps:int, threads:int=2) -> Path:
    "The cpu-chat shape, pretrained and fine-tuned for `steps` steps each (skipped where out/sft exists); returns out/sft."
    if (out / "sft" / "LATEST").exists(): return out / "sft"
    t0 = time.perf_counter()
    course("pretrain", "--preset", "cpu-chat", "--max-steps", steps, "--warmup-steps", 1, "--eval-every", steps, "--ckpt-every", steps,
           "--eval-tokens", 4096, "--sample-tokens", 0, "--threads", threads, "--no-progress", "--out", out / "base", threads=threads)
    course("sft", "--preset", "cpu-chat", "--base", out / "base", "--max-steps", steps, "--warmup-steps", 1, "--eval-every", steps,
           "--ckpt-every", steps, "--synthetic-rows", 2000, "--eval-rows", 32, "--eval-tokens", 0, "--threads", threads,
           "--no-progress", "--out", out / "sft", threads=threads)
    print(f"trained the cpu-chat shape for {steps} + {steps} steps in {time.perf_counter() - t0:.0f} s: {out / 'sft'}")
    return out / "sft"


class Server:
    "`chatgpt-course serve` on 127.0.0.1 and a free port, in its own process; stopped (SIGTERM) on exit."
    def __init__(self, checkpoint:Path, threads:int, max_streams:int, extra:list[str], timeout:float=180):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-c", RUN_CLI, "serve", "--checkpoint", str(checkpoint), "--host", "127.0.0.1", "--port", "0",
               "--max-streams", str(max_streams), "--feedback-db", str(Path(tempfile.mkdtemp()) / "feedback.sqlite"),
               "--log-level", "warning", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.url, self.log, deadline = None, [], time.monotonic() + timeout
        threading.Thread(target=self._read, daemon=True).start()
        while time.monotonic() < deadline and self.proc.poll() is None:  # the address first, then /health ready
            if self.url:
                try:
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200: return
                except httpx.HTTPError: pass
            time.sleep(0.2)
        self.stop(); sys.exit("the server did not become ready:\n" + "".join(self.log[-30:]))

    def _read(self):
        for line in self.proc.stdout:
            self.log.append(line)
            if self.url is None and " at http://127.0.0.1:" in line: self.url = line.split(" at ")[1].split()[0].rstrip("/")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(15)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()


def one_request(client:OpenAI, model:str, messages:list, max_tokens:int) -> dict:
    "One streamed chat completion: its time to first token, per-token latency and completion tokens (or its error)."
    t0, first, last, tokens = time.perf_counter(), None, None, None
    try:
        stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.usage is not None: tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                last = time.perf_counter(); first = first or last
        if tokens is None: return {"error": "no usage chunk"}
    except Exception as e: return {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    return {"ttft": (first or time.perf_counter()) - t0, "tokens": tokens,
            "tpot": (last - first) / (tokens - 1) if first is not None and tokens > 1 else None}


def load(url:str, model:str, streams:int, requests:int, max_tokens:int, max_seconds:float, prompts:list) -> dict:
    "`streams` client threads, `requests` each, one after another; the figures of the whole phase."
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=max_seconds + 60)
    results, deadline, lock = [], time.monotonic() + max_seconds, threading.Lock()
    def worker(w):
        for k in range(requests):
            if time.monotonic() > deadline: return
            r = one_request(client, model, prompts[(w * requests + k) % len(prompts)], max_tokens)
            with lock: results.append(r)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(streams)]
    for t in threads: t.start()
    for t in threads: t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    q = lambda xs, p: statistics.quantiles(xs, n=100, method="inclusive")[p - 1] if len(xs) > 1 else (xs[0] if xs else float("nan"))
    ttft, tpot = [r["ttft"] for r in ok], [r["tpot"] for r in ok if r["tpot"] is not None]
    return {"streams": streams, "requests": len(results), "errors": len(results) - len(ok), "wall_s": wall,
            "tokens": sum(r["tokens"] for r in ok), "mean_reply_tokens": statistics.fmean([r["tokens"] for r in ok]) if ok else 0.0,
            "tokens_per_s": sum(r["tokens"] for r in ok) / wall, "ttft_p50_s": q(ttft, 50), "ttft_p95_s": q(ttft, 95),
            "tpot_p50_s": q(tpot, 50), "tpot_p95_s": q(tpot, 95), "first_errors": [r["error"] for r in results if "error" in r][:3]}


def flat(runs:list[dict], config:dict) -> dict:
    "One flat object of named figures, as 07e's report reads serving.json (numbers and strings only)."
    out = dict(config)
    for r in runs:
        for k in ("requests", "errors", "tokens_per_s", "ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "tpot_p95_s", "mean_reply_tokens"):
            out[f"streams_{r['streams']}_{k}"] = round(r[k], 4) if isinstance(r[k], float) else r[k]
    by = {r["streams"]: r for r in runs}
    if 1 in by and len(by) > 1:
        top = max(by); out[f"speedup_{top}_vs_1"] = round(by[top]["tokens_per_s"] / by[1]["tokens_per_s"], 2)
    out["errors_total"] = sum(r["errors"] for r in runs)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", type=Path, help="a run, checkpoint or versioned model directory to serve")
    what.add_argument("--train-tiny", type=Path, metavar="DIR", help="train the cpu-chat shape into DIR (reused if there) and serve DIR/sft")
    p.add_argument("--train-steps", type=int, default=30, help="pretraining and fine-tuning steps for --train-tiny (default 30 each)")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16], help="concurrent streams, one phase each (default 1 4 16)")
    p.add_argument("--requests", type=int, default=8, help="requests per stream in each phase (default 8)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request (default 64)")
    p.add_argument("--max-seconds", type=float, default=120, help="no new request starts after this many seconds of a phase (default 120)")
    p.add_argument("--threads", type=int, default=1, help="the server's CPU threads (OMP_NUM_THREADS; default 1, see above)")
    p.add_argument("--server-args", default="", help="more flags for chatgpt-course serve, e.g. '--quantize int8'")
    p.add_argument("--json", type=Path, help="write the figures here (07e's report reads RUN/serving.json)")
    a = p.parse_args(argv)
    checkpoint = a.checkpoint or train_tiny(a.train_tiny, a.train_steps)
    prompts = [it["messages"] for it in make_eval_set(64, seed=0)]
    server = Server(checkpoint, a.threads, max(a.streams), a.server_args.split())
    try:
        model = httpx.get(server.url + "/v1/models").json()["data"][0]
        config = {"machine": machine_summary("cpu"), "checkpoint": str(checkpoint), "model": model["id"], "version": model.get("version", ""),
                  "server_threads": a.threads, "max_streams": max(a.streams), "max_tokens": a.max_tokens, "requests_per_stream": a.requests,
                  "server_args": a.server_args}
        for k, v in config.items(): print(f"{k}: {v}")
        load(server.url, model["id"], 1, 2, a.max_tokens, a.max_seconds, prompts)  # warm-up: one stream, then a batch
        load(server.url, model["id"], min(4, max(a.streams)), 1, a.max_tokens, a.max_seconds, prompts)
        runs = [load(server.url, model["id"], s, a.requests, a.max_tokens, a.max_seconds, prompts) for s in a.streams]
    finally: server.stop()
    print(f"\n{'streams':>7} {'requests':>8} {'errors':>6} {'tokens/s':>9} {'reply tok':>9} {'TTFT p50':>9} {'TTFT p95':>9} {'tok p50':>8} {'tok p95':>8}")
    for r in runs:
        print(f"{r['streams']:>7} {r['requests']:>8} {r['errors']:>6} {r['tokens_per_s']:>9.1f} {r['mean_reply_tokens']:>9.1f} "
              f"{r['ttft_p50_s'] * 1e3:>7.0f}ms {r['ttft_p95_s'] * 1e3:>7.0f}ms {r['tpot_p50_s'] * 1e3:>6.1f}ms {r['tpot_p95_s'] * 1e3:>6.1f}ms")
        for e in r["first_errors"]: print(f"        error: {e}")
    figures = flat(runs, config)
    if (s := next((k for k in figures if k.startswith("speedup_")), None)): print(f"\n{s}: {figures[s]}x")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True); a.json.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
