"""A reload under load, through the real server (08a's `make_app` on uvicorn, a free loopback port) and the official
`openai` client: while client threads send a bounded number of chat completions (streamed and not), POST /admin/reload
swaps in a new version. A stream is held mid-generation across the swap (the decode loop waits at a gate in v0001's
forward once that request has drawn a few tokens, until the reload has answered), so it is certainly in flight: it
finishes on the version it started on, with that version's text.
Zero requests fail; every reply's text is the greedy reply of the version its `system_fingerprint` names; afterwards
/v1/models and /metrics show the new version, and requests run on it."""
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import httpx
import pytest
import torch

from chatgpt_course.backend import Backend, publish_version
from chatgpt_course.checkpoint import save_checkpoint
from chatgpt_course.core import data_path
from chatgpt_course.engine import Engine, SamplingParams
from chatgpt_course.files import read_text
from chatgpt_course.model import GPT, GPTConfig
from chatgpt_course.tokenizer import BPETokenizer

openai = pytest.importorskip("openai")
serve = pytest.importorskip("chatgpt_course.serve")

TOK = BPETokenizer.train(read_text(data_path("tinyshakespeare.txt"))[:20_000], 300)
CFG = GPTConfig(block_size=96, vocab_size=320, n_layer=2, n_head=2, n_embd=32)
KEY, MAX = "test-key", 8


def run_dir(out, seed):
    "A run directory with a random model whose end tokens never win greedily (every reply runs to max_tokens)."
    torch.manual_seed(seed); model = GPT(CFG).eval()
    with torch.no_grad():
        for t in ("<|endoftext|>", "<|end|>"): model.transformer.wte.weight[TOK.special_tokens[t]] = 0.0
    TOK.save(out / "tokenizer")
    save_checkpoint(out, 1, model, meta={"config": {"model": asdict(CFG)}, "tokenizer": "tokenizer"})
    return model


def ask(client, i:int, max_tokens:int=MAX) -> tuple[str, str]:
    "One chat completion, streamed for odd i: (the version that answered, the reply)."
    msgs = [{"role": "user", "content": f"question number {i}?"}]
    if i % 2 == 0:
        r = client.chat.completions.create(model="pip", messages=msgs, max_tokens=max_tokens, temperature=0)
        return r.system_fingerprint, r.choices[0].message.content
    chunks = list(client.chat.completions.create(model="pip", messages=msgs, max_tokens=max_tokens, temperature=0, stream=True))
    assert len({c.system_fingerprint for c in chunks}) == 1 and sum(c.choices[0].finish_reason is not None for c in chunks if c.choices) == 1
    return chunks[0].system_fingerprint, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_reload_under_load(tmp_path):
    models = {"v0001": run_dir(tmp_path / "a", 0), "v0002": run_dir(tmp_path / "b", 1)}
    publish_version(tmp_path / "pip", tmp_path / "a")
    want = lambda v, i, n=MAX: Engine(models[v], TOK).chat([{"role": "user", "content": f"question number {i}?"}], SamplingParams(max_new_tokens=n, temperature=0))
    backend = Backend(tmp_path / "pip", max_streams=4, max_queue=64, device="cpu").start()
    with backend.pinned() as (served_model, _, _): pass
    blocked, release, real = threading.Event(), threading.Event(), served_model.forward
    def held_running():  # the held request (the only one asking for 40 tokens) is decoding and has drawn a few
        return any(r.ticket.params.max_new_tokens == 40 and r.ticket.completion_tokens >= 3 for g in backend._groups.values() for r in g.rows)
    def gated(*a, **k):  # runs in the decode thread: v0001's forward waits here, the held request mid-generation, until released
        if not release.is_set() and held_running(): blocked.set(); release.wait(30)
        return real(*a, **k)
    served_model.forward = gated
    try:
        with serve.ServerThread(serve.make_app(backend, api_key=KEY, feedback_db=None)) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
            admin = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
            with ThreadPoolExecutor(6) as pool:
                before = [pool.submit(ask, client, i) for i in range(12)]  # the load: 12 requests, 6 at a time
                try:
                    held = client.chat.completions.create(model="pip", messages=[{"role": "user", "content": "question number 99?"}],
                                                          max_tokens=40, temperature=0, stream=True)
                    assert blocked.wait(30)  # the decode loop stands still with the held request half-written on v0001
                    assert publish_version(tmp_path / "pip", tmp_path / "b") == "v0002"
                    r = admin.post("/admin/reload")
                    assert r.status_code == 200 and r.json()["version"] == "v0002", r.text
                    models_seen = client.models.list().data
                finally: release.set()  # on a failure too: the decode loop must not stay at the gate
                chunks = list(held)
                after = [pool.submit(ask, client, i) for i in range(12, 20)]
                results = [f.result() for f in before + after]  # any failed request raises here
            metrics = httpx.get(srv.url + "/metrics").text
    finally:
        backend.stop()
    assert {c.system_fingerprint for c in chunks} == {"v0001"}  # the held stream finished on the version it started on
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want("v0001", 99, 40)
    for i, (version, text) in enumerate(results): assert text == want(version, i), (i, version)
    assert {v for v, _ in results[12:]} == {"v0002"}  # every request after the reload ran on the new version
    assert [(m.id, m.version) for m in models_seen] == [("pip", "v0002")]
    assert 'chatgpt_model_info{name="pip",version="v0002"} 1.0' in metrics
