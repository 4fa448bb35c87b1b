"""quantize (08d): the from-scratch int8 arithmetic equals PyTorch's `quantize_dynamic`; an int8 model writes float32's
greedy text through the engine (generate and stream, with the KV cache); bf16 keeps the tied weights; bad input is
a one-line CourseError. Tiny models only: a few seconds in all."""
import warnings

import pytest
import torch
import torch.nn as nn

from chatgpt_course.core import CourseError
from chatgpt_course.engine import Engine, SamplingParams
from chatgpt_course.model import GPT, GPTConfig
from chatgpt_course.tokenizer import CharTokenizer
from chatgpt_course.quantize import (act_qmax, activation_qparams, int8_linear, linear_error_bound, model_bytes,
                                     quantize_activations, quantize_model, quantize_rows, state_dict_bytes)

ULPS = 8  # the stated tolerance: 8 units in the last place of float32 at the largest output, 8 * 2^-23 * max|y|


def reference(lin: nn.Linear) -> nn.Module:
    "PyTorch's dynamic int8 layer for `lin`, one scale per output row (its deprecation warnings silenced)."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
        return quantize_dynamic(nn.Sequential(lin), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)[0]


def assert_same_outputs(ref: nn.Module, lin: nn.Linear, x: torch.Tensor, qmax: int):
    q, s = quantize_rows(lin.weight)
    with torch.no_grad(): y_ref, y_float = ref(x), lin(x)
    ours = int8_linear(x, q, s, lin.bias, qmax)
    assert (ours - y_ref).abs().max().item() <= ULPS * 2**-23 * max(y_ref.abs().max().item(), 1e-30)
    assert ((ours - y_float).abs() <= linear_error_bound(x, q, s, qmax) * (1 + 1e-4) + 1e-6).all()  # the error bound holds


@pytest.mark.parametrize("shape", [(64, 48), (128, 512), (97, 13), (512, 128), (7, 3)])
def test_from_scratch_equals_quantize_dynamic(shape):
    n_in, n_out = shape
    g = torch.Generator().manual_seed(n_in * 1000 + n_out)
    lin = nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.normal_(0, 0.05, generator=g)
        lin.weight[0] *= 30  # a row far larger than the rest
        lin.weight[1] = 0.0  # a row of zeros: the smallest scale, not a division by zero
    ref = reference(lin)
    q, s = quantize_rows(lin.weight)
    assert torch.equal(ref.weight().int_repr(), q)  # the integers, bit for bit
    assert torch.equal(ref.weight().q_per_channel_scales().float(), s)  # and the scales
    xs = [torch.randn(5, n_in, generator=g) * 3 + 0.5,
          torch.randn(2, 3, n_in, generator=g).abs(),  # 3-D, all positive: the zero point is 0
          -torch.rand(4, n_in, generator=g),  # all negative: the zero point is Q
          torch.zeros(2, n_in),  # all zero: the kernel's scale of 0.1
          torch.round(torch.randn(6, n_in, generator=g) * 8) / 8]  # many values on exact half steps
    for x in xs: assert_same_outputs(ref, lin, x, act_qmax())


def test_rounding_near_half_steps_is_the_kernels():
    "Values within a rounding error of a half step: only one fused rounding of x / s + z gives the kernel's integers."
    torch.manual_seed(0)
    lin = nn.Linear(16, 4, bias=False)
    ref, (q, s) = reference(lin), quantize_rows(lin.weight)
    g, differ = torch.Generator().manual_seed(1), 0
    for _ in range(300):
        x = torch.zeros(1, 16); x[0, 0], x[0, 1] = -1.3, 2.1  # fixes the range, so the step is known
        sx, z = activation_qparams(x, act_qmax())
        half_steps = torch.randint(-20, 60, (14,), generator=g) + 0.5
        x[0, 2:] = (half_steps.double() * sx * (1 + torch.randint(-8, 9, (14,), generator=g).double() * 6e-8)).float()
        inv = torch.tensor(sx, dtype=torch.float32).reciprocal()
        differ += int(not torch.equal(torch.round(x * inv + z), quantize_activations(x, sx, z).float()))  # two roundings vs one
        assert_same_outputs(ref, lin, x, act_qmax())
    assert differ > 10  # the inputs do reach the cases where the order of rounding matters


@pytest.mark.skipif("qnnpack" not in torch.backends.quantized.supported_engines, reason="this PyTorch has no QNNPACK engine")
def test_qnnpack_keeps_all_255_levels():
    was = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "qnnpack"
        assert act_qmax() == 255
        torch.manual_seed(0)
        lin = nn.Linear(32, 24)
        ref = reference(lin)
        for x in (torch.randn(3, 32) * 2, torch.rand(2, 32)): assert_same_outputs(ref, lin, x, 255)
    finally: torch.backends.quantized.engine = was


def cycle_model(steps: int = 80):
    "A tiny GPT trained to follow a fixed cycle of 31 characters (next = successor): confident, so greedy text is well defined."
    torch.manual_seed(0)
    chars = "".join(chr(0x4E00 + i) for i in range(31))
    tok = CharTokenizer(chars)  # 31 characters and <|endoftext|>
    succ = torch.randperm(31)
    cfg = GPTConfig(block_size=64, vocab_size=32, n_layer=2, n_head=2, n_embd=32, bias=False, pos="rope")
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        seq = torch.empty(8, 33, dtype=torch.long); seq[:, 0] = torch.randint(0, 31, (8,))
        for t in range(1, 33): seq[:, t] = succ[seq[:, t - 1]]
        _, loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad(); loss.backward(); opt.step()
    return model.eval(), tok, succ


def test_int8_greedy_text_is_float32s():
    model, tok, succ = cycle_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q8 = quantize_model(model, "int8")
    assert type(model.lm_head) is nn.Linear and all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # caller untouched
    assert not q8.training and "DynamicQuantizedLinear" in repr(q8.lm_head) and q8.transformer.wte.weight.dtype == torch.float32
    prompts, params = [[0, succ[0].item()], [5], [7, succ[7].item(), succ[succ[7]].item()]], SamplingParams(max_new_tokens=40, temperature=0)
    e32, e8 = Engine(model, tok), Engine(q8, tok)
    c32, c8 = e32.generate(prompts, params), e8.generate(prompts, params)  # batched, rows of different lengths, the KV cache
    for p, a, b in zip(prompts, c32, c8):
        want = [p[-1]]
        for _ in range(40): want.append(succ[want[-1]].item())
        assert a.ids == want[1:]  # float32 learned the cycle
        assert b.ids == a.ids and b.text == a.text  # the measure: int8 writes the same 40 greedy tokens
    assert "".join(e8.stream(prompts[2], params)) == c8[2].text  # streamed pieces join to the batched text
    # and why: every logit moves by far less than the lead of the top token over the next
    seq = torch.tensor([prompts[2] + c32[2].ids])
    with torch.inference_mode(): l32, l8 = model(seq)[0][0], q8(seq)[0][0]
    delta = (l8 - l32).abs().amax(-1)
    top2 = l32.topk(2, -1).values
    assert (top2[:, 0] - top2[:, 1] > 2 * delta).float().mean() >= 0.95  # where this holds, no top token can change
    assert delta.max() <= 0.05 * (l32.amax(-1) - l32.amin(-1)).min()


def test_bf16_keeps_the_tie_and_halves_the_bytes():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=40, n_layer=1, n_head=2, n_embd=32, bias=False, pos="rope")).eval()
    m16 = quantize_model(model, "bf16")
    assert m16.lm_head.weight is m16.transformer.wte.weight and m16.lm_head.weight.dtype == torch.bfloat16
    assert model.lm_head.weight.dtype == torch.float32  # the caller's model is as it was
    assert m16.make_cache(1).k.dtype == torch.bfloat16 and quantize_model(model, "int8").make_cache(1).k.dtype == torch.float32
    assert model_bytes(m16) * 2 == model_bytes(model) and state_dict_bytes(m16) < state_dict_bytes(model)
    tok = CharTokenizer("".join(chr(0x4E00 + i) for i in range(39)))
    out = Engine(m16, tok).generate([[1, 2, 3]], SamplingParams(max_new_tokens=5, temperature=0))[0]
    assert len(out.ids) == 5
    assert quantize_model(model, None) is model and quantize_model(model, "none") is model


def test_bad_input_is_one_line():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=16, vocab_size=20, n_layer=1, n_head=1, n_embd=8, bias=False)
    model = GPT(cfg).eval()
    with torch.device("meta"): on_meta = GPT(cfg)  # stands in for a GPU: any device but the CPU
    q8, m16 = quantize_model(model, "int8"), quantize_model(model, "bf16")
    q, s = quantize_rows(model.lm_head.weight)
    cases = {"int4": (lambda: quantize_model(model, "int4"), "not one of"),
             "upper case": (lambda: quantize_model(model, "INT8"), "not one of"),
             "a number": (lambda: quantize_model(model, 8), "not one of"),
             "not a model": (lambda: quantize_model({"a": 1}, "int8"), "needs a GPT"),
             "not on the CPU": (lambda: quantize_model(on_meta, "int8"), "CPU only"),
             "bf16 weights": (lambda: quantize_model(m16, "int8"), "float32"),
             "twice": (lambda: quantize_model(q8, "int8"), "already int8"),
             "int8 then bf16": (lambda: quantize_model(q8, "bf16"), "already int8"),
             "1-D weights": (lambda: quantize_rows(torch.ones(3)), "2-D float"),
             "integer weights": (lambda: quantize_rows(torch.ones(2, 2, dtype=torch.long)), "2-D float"),
             "qmax": (lambda: activation_qparams(torch.ones(2), 200), "qmax"),
             "empty": (lambda: activation_qparams(torch.ones(0)), "non-empty"),
             "width": (lambda: int8_linear(torch.ones(2, 3), q, s), "inputs"),
             "scales": (lambda: int8_linear(torch.ones(2, 8), q, s[:3]), "scale")}
    for name, (call, words) in cases.items():
        with pytest.raises(CourseError) as e: call()
        assert words in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
