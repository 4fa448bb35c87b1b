"""chatgpt_course.model beyond the notebook's cells.

- Hugging Face GPT-2 interop through files, both ways, including the layouts real checkpoints use
  (sharded safetensors with an index, OpenAI's key names without the "transformer." prefix plus old
  attention-mask buffers) and exact-GELU models;
- property tests (hypothesis): the closed-form parameter count matches the built model for any shape,
  KV-cached decoding in any chunking matches the full forward pass, rows of different lengths prefilled as one
  right-padded block and decoded side by side (per-row positions, the padding masked out, rows dropped and copied
  with `select`) match each row's own full forward pass, any out-of-range token id is a CourseError;
- a subprocess check that importing the module stays light (no transformers, no safetensors, no device probing).
"""
import json, subprocess, sys
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck

from chatgpt_course.core import CourseError
from chatgpt_course.model import (GPT, GPTConfig, count_params, save_hf, load_hf, to_hf_state_dict,
                                  from_hf_state_dict, IGNORE_INDEX)

SMALL = GPTConfig(block_size=24, vocab_size=90, n_layer=2, n_head=4, n_embd=32)


def _hf_model(config, seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, bos_token_id=0, eos_token_id=0))
    return hf.eval()


def _ids(config, B=2, seed=0):
    return torch.randint(0, config.vocab_size, (B, config.block_size), generator=torch.Generator().manual_seed(seed))


def test_transformers_to_ours_sharded(tmp_path):
    hf = _hf_model(SMALL)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")  # forces several files and model.safetensors.index.json
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ours = load_hf(tmp_path).eval()
    ids = _ids(SMALL)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], hf(ids).logits, atol=1e-4, rtol=0)


def test_openai_key_layout(tmp_path):
    """OpenAI's checkpoints on the hub name tensors "h.0.attn..." (no "transformer.") and carry mask buffers."""
    from safetensors.torch import save_file
    hf = _hf_model(SMALL, seed=1)
    sd = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    T = SMALL.block_size
    for i in range(SMALL.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    hf.config.save_pretrained(tmp_path)
    ours = load_hf(tmp_path).eval()
    ids = _ids(SMALL, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], hf(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"gelu_approx": "none"}, {"dropout": 0.1}])
def test_ours_to_transformers(tmp_path, kw):
    transformers = pytest.importorskip("transformers")
    config = replace(SMALL, **kw)
    torch.manual_seed(2)
    ours = GPT(config).eval()
    save_hf(ours, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = _ids(config, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids)[0], atol=1e-4, rtol=0)
    back = load_hf(tmp_path)
    assert back.config == replace(config, bias=True)  # a model without biases comes back with zero biases
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(ids)[0], ours(ids)[0], atol=1e-6, rtol=0)


def test_save_hf_refuses_other_variants_and_files(tmp_path):
    for kw in ({"norm": "rmsnorm"}, {"pos": "rope"}, {"mlp": "swiglu"}):
        with pytest.raises(CourseError, match="only the GPT-2 variant"):
            save_hf(GPT(replace(SMALL, **kw)), tmp_path / "x")
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(CourseError, match="is a file"):
        save_hf(GPT(SMALL), tmp_path / "file")


def test_load_hf_rejects_mismatch_and_bad_json(tmp_path):
    save_hf(GPT(SMALL), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "vocab_size": 91}))
    with pytest.raises(CourseError, match=r"transformer.wte.weight has shape \(90, 32\)"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CourseError, match="not valid JSON"):
        load_hf(tmp_path)


def test_untied_head_is_refused():
    sd = to_hf_state_dict(GPT(SMALL))
    sd["lm_head.weight"] = torch.zeros_like(sd["transformer.wte.weight"])
    with pytest.raises(CourseError, match="lm_head.weight differs"):
        from_hf_state_dict(sd, SMALL)


configs = st.builds(
    lambda L, H, hs, V, T, norm, pos, mlp, bias: GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=H * hs,
                                                           norm=norm, pos=pos, mlp=mlp, bias=bias),
    L=st.integers(1, 3), H=st.integers(1, 4), hs=st.sampled_from([2, 4, 8, 16]), V=st.integers(2, 300),
    T=st.integers(1, 40), norm=st.sampled_from(["layernorm", "rmsnorm"]), pos=st.sampled_from(["learned", "rope"]),
    mlp=st.sampled_from(["gelu", "swiglu"]), bias=st.booleans())


@settings(max_examples=40, deadline=None)
@given(config=configs)
def test_count_params_matches_model(config):
    with torch.device("meta"):
        m = GPT(config)
    assert m.num_params() == count_params(config)
    assert m.num_params(non_embedding=True) == count_params(config, non_embedding=True)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, data=st.data())
def test_cached_decoding_matches_full_forward(config, data):
    torch.manual_seed(0)
    m = GPT(config).eval()
    B = data.draw(st.integers(1, 3))
    T = data.draw(st.integers(1, config.block_size))
    ids = torch.randint(0, config.vocab_size, (B, T))
    cuts = sorted(data.draw(st.sets(st.integers(1, T - 1), max_size=4))) if T > 1 else []
    with torch.no_grad():
        full, _ = m(ids)
        cache = m.make_cache(B, max_len=T)
        parts = [m(ids[:, a:b], cache=cache)[0] for a, b in zip([0] + cuts, cuts + [T])]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)
    assert cache.pos == T


@settings(max_examples=30, deadline=None)
@given(bad=st.one_of(st.integers(min_value=-2**62, max_value=-1), st.integers(min_value=SMALL.vocab_size, max_value=2**62)),
       where=st.integers(0, 5))
def test_out_of_range_ids_are_course_errors(bad, where):
    m = GPT(SMALL)
    ids = torch.randint(0, SMALL.vocab_size, (1, 6))
    ids[0, where] = bad
    with pytest.raises(CourseError, match="token ids must be in"):
        m(ids)
    targets = torch.randint(0, SMALL.vocab_size, (1, 6))
    targets[0, where] = bad
    if bad != IGNORE_INDEX:
        with pytest.raises(CourseError, match="target ids must be in"):
            m(torch.zeros(1, 6, dtype=torch.long), targets)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, data=st.data())
def test_rows_of_different_lengths_match_their_own_forward(config, data):
    torch.manual_seed(0)
    m = GPT(config).eval()
    T = config.block_size
    lengths = data.draw(st.lists(st.integers(1, T), min_size=1, max_size=4))  # each row's prompt
    steps = data.draw(st.integers(0, T - max(lengths)))  # then this many tokens, one per row per step
    seqs = torch.randint(0, config.vocab_size, (len(lengths), T))
    L, rows = torch.tensor(lengths), torch.arange(len(lengths))
    with torch.no_grad():
        cache = m.make_cache(len(lengths), max_len=T)
        got = [m(seqs[:, :max(lengths)], cache=cache, last_only=True, lengths=L)[0]]  # right-padded: the padding is never seen
        got += [m(seqs[rows, L + s][:, None], cache=cache)[0] for s in range(steps)]
        for b, n in enumerate(lengths):
            alone = m(seqs[b:b + 1, :n + steps])[0][0, n - 1:]
            torch.testing.assert_close(torch.cat([g[b] for g in got]), alone, atol=1e-5, rtol=0)
        assert cache.lengths.tolist() == [n + steps for n in lengths]
        if steps < T - max(lengths) and len(lengths) > 1:  # drop row 0 and copy the last: the others carry on unchanged
            keep = list(range(1, len(lengths))) + [len(lengths) - 1]
            cache.select(keep)
            nxt = m(seqs[keep, (L + steps)[keep]][:, None], cache=cache)[0]
            for k, b in enumerate(keep):
                alone = m(seqs[b:b + 1, :lengths[b] + steps + 1])[0][0, -1]
                torch.testing.assert_close(nxt[k, 0], alone, atol=1e-5, rtol=0)


def test_import_is_light():
    """What importing the model module loads, not how long it takes: a time would depend on the machine."""
    code = ("import sys; import chatgpt_course.model; import torch; "
            "print([k for k in ('transformers', 'safetensors', 'huggingface_hub', 'matplotlib') if k in sys.modules]); "
            "print(torch.cuda.is_initialized())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    heavy, cuda = r.stdout.split("\n")[:2]
    assert heavy == "[]", f"importing chatgpt_course.model loaded {heavy}"
    assert cuda == "False", "importing chatgpt_course.model initialised CUDA"


@pytest.mark.parametrize("kw", [{}, {"norm": "rmsnorm", "pos": "rope", "mlp": "swiglu", "bias": False}])
def test_compiles_without_graph_breaks(kw):
    """torch.compile(fullgraph=True) traces the whole forward (the id check steps aside while compiling)."""
    config = replace(SMALL, **kw)
    torch.manual_seed(0)
    m = GPT(config)
    ids = _ids(config)
    targets = torch.roll(ids, -1, 1)
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    _, loss = compiled(ids, targets)
    loss.backward()
    torch.testing.assert_close(loss, m(ids, targets)[1], atol=1e-6, rtol=0)


def test_bf16_model_saves_bf16(tmp_path):
    from safetensors import safe_open
    m = GPT(SMALL).to(torch.bfloat16)
    save_hf(m, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.get_tensor("transformer.wte.weight").dtype == torch.bfloat16
    back = load_hf(tmp_path)  # loads into fp32 parameters, values exactly the bf16 ones
    assert back.transformer.wte.weight.dtype == torch.float32
    assert torch.equal(back.transformer.wte.weight, m.transformer.wte.weight.float())
