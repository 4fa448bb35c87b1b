"""chatgpt_course.backend beyond the notebook's cells.

- continuous batching from many threads at once: at temperature 0 every stream's ids and text equal `Engine.generate` of
  the same prompt alone, for the GPT-2 (learned positions) and the Llama-style (RoPE) variants; the streamed pieces join
  to the whole text; seeded sampling draws what the engine draws alone; stop strings cut as the engine cuts them;
- cancel, of a row decoding and of a ticket still queued, frees its place for the next one; the queue's limit
  (QueueFull with a whole number of seconds); a model that raises ends its tickets with GenerationError and the backend
  goes on serving; stop() ends what it had not finished, and start() serves again;
- versions: listing (hidden folders being written are not versions), publishing, a plain run directory whose LATEST
  moves on, a ticket queued before a reload decodes on the version it was submitted to, a corrupt version fails to
  load and leaves the old one served (in the foreground and in the background), pinned() lends the version served,
  or the one a reload replaced;
- quantize="int8" serves (when chatgpt_course.quantize is there).
"""
import importlib.util, shutil, threading, time
from dataclasses import asdict, replace

import pytest
import torch

from chatgpt_course.backend import (Backend, GenerationError, QueueFull, list_versions, newest_version, publish_version)
from chatgpt_course.checkpoint import save_checkpoint
from chatgpt_course.core import CourseError, data_path
from chatgpt_course.engine import Engine, SamplingParams
from chatgpt_course.files import read_text
from chatgpt_course.model import GPT, GPTConfig
from chatgpt_course.tokenizer import BPETokenizer

TOK = BPETokenizer.train(read_text(data_path("tinyshakespeare.txt"))[:20_000], 300)
CFG = GPTConfig(block_size=64, vocab_size=320, n_layer=2, n_head=2, n_embd=32)
VARIANTS = {"gpt2-learned": CFG, "llama-rope": replace(CFG, norm="rmsnorm", pos="rope", mlp="swiglu", bias=False)}
GREEDY = SamplingParams(max_new_tokens=12, temperature=0)


def run_dir(out, seed=0, config=CFG, step=1):
    "A run directory as the training commands write one, with a random model; returns the model."
    torch.manual_seed(seed); model = GPT(config).eval()
    TOK.save(out / "tokenizer")
    save_checkpoint(out, step, model, meta={"config": {"model": asdict(config)}, "tokenizer": "tokenizer"})
    return model


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, TOK.n_vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    "A versioned model directory serving v0001; the model itself for reference."
    d = tmp_path_factory.mktemp("served")
    model = run_dir(d / "run")
    publish_version(d / "pip", d / "run")
    return d / "pip", model


@pytest.mark.parametrize("variant", VARIANTS)
def test_streams_from_many_threads_equal_each_prompt_alone(tmp_path, variant):
    model = run_dir(tmp_path / "run", config=VARIANTS[variant])
    ps = prompts((5, 1, 27, 14, 40, 9, 60, 33, 2, 18, 50, 7))
    alone = [Engine(model, TOK).generate([p], GREEDY)[0] for p in ps]
    got, pieces = [None] * len(ps), [None] * len(ps)
    with Backend(tmp_path / "run", max_streams=5, device="cpu") as be:  # fewer streams than requests: some queue
        def client(i):
            t = be.submit(ps[i], GREEDY); evs = list(t)
            pieces[i], got[i] = "".join(e.text for e in evs), ([i for e in evs for i in e.token_ids], evs[-1].finish_reason, t.completion_tokens)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(ps))]
        for th in threads: th.start()
        for th in threads: th.join(60)
        assert be.stats()["active"] == 0 and be.stats()["queued"] == 0
    assert [g[0] for g in got] == [c.ids for c in alone]
    assert [g[1] for g in got] == [c.finish_reason for c in alone] and [g[2] for g in got] == [len(c.ids) for c in alone]
    assert pieces == [c.text for c in alone]
    assert {len(c.ids) for c in alone} >= {4, 12}  # the 60-token prompt met the context; others ran to max_new_tokens


def test_seeded_sampling_and_stop_strings_match_the_engine(served):
    d, model = served
    eng, ps = Engine(model, TOK), prompts((6, 20, 11, 3))
    sampled = [SamplingParams(max_new_tokens=16, temperature=0.8, top_p=0.9, top_k=40, seed=s) for s in range(4)]
    texts = [eng.generate([p], replace(GREEDY, max_new_tokens=24))[0].text for p in ps]
    stops = [SamplingParams(max_new_tokens=24, temperature=0, stop=(t[5:8],)) if len(t) > 8 else GREEDY for t in texts]
    with Backend(d, device="cpu") as be:
        ts = [be.submit(p, s) for p, s in zip(ps, sampled)] + [be.submit(p, s) for p, s in zip(ps, stops)]
        got = [t.result() for t in ts]
    want = [eng.generate([p], s)[0] for p, s in zip(ps + ps, sampled + stops)]
    assert [c.ids for c in got] == [c.ids for c in want] and [c.text for c in got] == [c.text for c in want]
    assert any(s.stop and c.finish_reason == "stop" for s, c in zip(stops, got[4:]))


def test_cancel_frees_the_place_for_a_queued_ticket(served):
    d, _ = served
    be = Backend(d, max_streams=1, max_queue=2, device="cpu")  # stepped by hand
    long = replace(GREEDY, max_new_tokens=40)
    a, b, c = (be.submit(p, long) for p in prompts((4, 5, 6)))
    be.step(); assert be.stats()["active"] == 1 and be.stats()["queued"] == 2
    c.cancel(); a.cancel(); be.step()  # a leaves the batch, c leaves the queue, b takes the place
    assert [list(t)[-1].finish_reason for t in (a, c)] == ["cancelled", "cancelled"] and c.completion_tokens == 0
    assert be.stats()["active"] == 1 and be.stats()["queued"] == 0 and b.completion_tokens == 2
    first = next(iter(b))  # read a little, then the rest: result() is still the whole generation, and the same again
    while be.step(): pass
    assert b.finish_reason == "length" and b.result().ids[:1] == first.token_ids and len(b.result().ids) == 40
    with pytest.raises(CourseError, match="read already"): list(b)


def test_queue_full_carries_a_retry_after(served):
    d, _ = served
    be = Backend(d, max_streams=1, max_queue=0, device="cpu")
    be.submit([1, 2, 3], GREEDY)
    with pytest.raises(QueueFull) as e: be.submit([1, 2, 3], GREEDY)
    assert isinstance(e.value.retry_after, int) and e.value.retry_after >= 1 and "1 streams and 0 queue places" in str(e.value)


def test_a_model_that_raises_fails_its_tickets_and_the_backend_goes_on(served, monkeypatch):
    d, model = served
    with Backend(d, device="cpu") as be:
        with be.pinned() as (m, tok, version): pass
        real = m.forward
        def broken(*a, **k): raise RuntimeError("CUDA out of memory (pretend)\nsecond line")
        monkeypatch.setattr(m, "forward", broken)
        t = be.submit([1, 2, 3], GREEDY)
        with pytest.raises(GenerationError, match="generation failed: RuntimeError: CUDA out of memory"): list(t)
        assert t.finish_reason == "error"
        monkeypatch.setattr(m, "forward", real)
        assert be.submit([1, 2, 3], GREEDY).result().ids == Engine(model, TOK).generate([[1, 2, 3]], GREEDY)[0].ids
        assert be.stats()["active"] == 0


def test_stop_ends_unfinished_tickets_and_start_serves_again(served):
    d, _ = served
    be = Backend(d, max_streams=1, device="cpu")
    queued = [be.submit(p, GREEDY) for p in prompts((3, 4))]
    be.step(); be.stop()
    for t in queued:
        for _ in range(2):  # the failure stays: reading again raises again, never waits
            with pytest.raises(GenerationError, match="stopped"): t.result()
    with pytest.raises(GenerationError, match="has stopped"): be.submit([1], GREEDY)
    be.start()
    try: assert be.submit([1, 2], GREEDY).result().finish_reason in ("stop", "length")
    finally: be.stop()


def test_versions_on_disk(tmp_path):
    run_dir(tmp_path / "run")
    assert publish_version(tmp_path / "pip", tmp_path / "run") == "v0001"
    assert publish_version(tmp_path / "pip", tmp_path / "run" / "ckpt-00000001", name="v0010") == "v0010"
    assert publish_version(tmp_path / "pip", tmp_path / "run") == "v0011"
    (tmp_path / "pip" / "versions" / ".tmp-v0099").mkdir()  # a version still being written
    assert [v for v, _ in list_versions(tmp_path / "pip")] == ["v0001", "v0010", "v0011"]
    for bad, msg in (("../x", "not a plain folder name"), ("v0001", "taken")):
        with pytest.raises(CourseError, match=msg): publish_version(tmp_path / "pip", tmp_path / "run", name=bad)
    with pytest.raises(CourseError, match="holds no checkpoint"): publish_version(tmp_path / "pip", tmp_path / "run" / "tokenizer")
    (tmp_path / "empty" / "versions").mkdir(parents=True)
    with pytest.raises(CourseError, match="holds no version yet"): Backend(tmp_path / "empty")
    be = Backend(tmp_path / "pip" / "versions" / "v0010", device="cpu")  # one version's run directory served alone
    assert (be.name, be.version, be.context) == ("v0010", "ckpt-00000001", 64)


def test_a_plain_run_directory_reloads_its_newest_checkpoint(tmp_path):
    run_dir(tmp_path / "run", seed=0)
    be = Backend(tmp_path / "run", device="cpu")
    assert (be.name, be.version) == ("run", "ckpt-00000001")
    newer = run_dir(tmp_path / "run", seed=1, step=2)  # training went on in the directory served
    assert be.reload() == "ckpt-00000002" and newest_version(tmp_path / "run")[0] == "ckpt-00000002"
    with be.pinned() as (model, tok, version):
        assert version == "ckpt-00000002" and torch.equal(model.transformer.wte.weight, newer.transformer.wte.weight)


def test_a_ticket_decodes_on_the_version_it_was_submitted_to(tmp_path):
    old, new = run_dir(tmp_path / "a", seed=0), run_dir(tmp_path / "b", seed=1)
    publish_version(tmp_path / "pip", tmp_path / "a")
    be = Backend(tmp_path / "pip", device="cpu")
    early = be.submit([5, 6, 7], GREEDY)  # queued, not yet admitted, when the version changes
    publish_version(tmp_path / "pip", tmp_path / "b")
    assert be.reload() == "v0002" and be.stats()["version"] == "v0002"
    late = be.submit([5, 6, 7], GREEDY)
    be.step(); assert be.stats()["versions"] == ["v0001", "v0002"]
    while be.step(): pass
    assert (early.version, late.version) == ("v0001", "v0002") and be.stats()["versions"] == ["v0002"]
    assert early.result().ids == Engine(old, TOK).generate([[5, 6, 7]], GREEDY)[0].ids
    assert late.result().ids == Engine(new, TOK).generate([[5, 6, 7]], GREEDY)[0].ids != early.result().ids
    with be.pinned(early.version) as (model, _, version):  # the replaced version is still there to score what it wrote
        assert version == "v0001" and torch.equal(model.transformer.wte.weight, old.transformer.wte.weight)
    with pytest.raises(GenerationError, match="no longer loaded"):
        with be.pinned("v0000"): pass


def test_a_corrupt_version_fails_to_load_and_the_old_one_stays(tmp_path):
    run_dir(tmp_path / "run")
    publish_version(tmp_path / "pip", tmp_path / "run")
    be = Backend(tmp_path / "pip", device="cpu")
    publish_version(tmp_path / "pip", tmp_path / "run")
    weights = tmp_path / "pip" / "versions" / "v0002" / "ckpt-00000001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CourseError, match="reload of .* failed: .*corrupt"): be.reload()
    assert be.version == "v0001"
    assert be.reload(wait=False) == "v0002"
    for _ in range(200):
        if be.reload_error: break
        time.sleep(0.01)
    assert "corrupt" in be.reload_error and be.version == "v0001"
    shutil.rmtree(tmp_path / "pip" / "versions" / "v0002"); publish_version(tmp_path / "pip", tmp_path / "run")
    assert be.reload() == "v0002" and be.reload_error is None


def test_not_loaded_yet(served):
    be = Backend(served[0], load=False, device="cpu")
    assert not be.ready and be.stats()["version"] is None
    with pytest.raises(GenerationError, match="no model is loaded"): be.submit([1], GREEDY)
    assert be.reload() == "v0001" and be.ready


@pytest.mark.skipif(importlib.util.find_spec("chatgpt_course.quantize") is None, reason="chatgpt_course.quantize is not there")
def test_int8_serves(served):
    be = Backend(served[0], device="cpu", quantize="int8")
    t = be.submit([1, 2, 3], GREEDY)
    while be.step(): pass
    assert t.finish_reason in ("stop", "length") and t.completion_tokens >= 1
