"""On CUDA only (skipped elsewhere): what the CPU cannot show. The compiled forward against eager under bf16 (the
opaque normalize's reason to exist), TTT's graphs at the default dims (one adapted, one forward only, none after the
warm-up, with tokens on the GPU and a deadline that strikes), GPTQ's Hessians and fail-soft solve, FlashAttention 3
against SDPA. At 2 layers (LAYERS): neither property depends on depth, and a 12-layer dynamic TTT graph takes
minutes to compile (tools/gpu_check.py's call 2 compiles the default shape)."""
import pytest
import torch

import train_gpt
from train_gpt import GPT, collect_hessians, evaluate_ttt, load_hparams, quantized_tensors

pytestmark = pytest.mark.gpu


LAYERS = "2"


def default_model(**env):
    h = load_hparams({"TRAIN_SEQ_LEN": "1024", "NUM_LAYERS": LAYERS, **env})
    torch.manual_seed(0)
    model = GPT(h).cuda()
    with torch.no_grad():
        model.emb.weight.normal_(0, 0.5)
    return h, model


def test_compiled_matches_eager_under_bf16(monkeypatch):
    h, model = default_model()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randint(0, h.vocab_size, (4, 1024), device="cuda", generator=g)
    y = torch.randint(0, h.vocab_size, (4, 1024), device="cuda", generator=g)
    compiled = torch.compile(model, dynamic=False, fullgraph=True)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        loss_c, loss_e = compiled(x, y).item(), model(x, y).item()
    model.double()
    monkeypatch.setattr(train_gpt, "flash_attn_func", None)  # FlashAttention has no fp64: the reference is SDPA's
    with torch.no_grad():
        exact = model(x, y).item()
    print(f"loss compiled {loss_c:.6f} eager {loss_e:.6f} fp64 {exact:.6f}")
    assert abs(loss_c - exact) < 2 * abs(loss_e - exact) + 2e-3


def test_ttt_graphs_at_default_dims_with_tokens_on_the_gpu():
    """The first GPU run died here: TTT's bookkeeping indexed a host tensor with a CUDA index. Now: the warm-up on
    random tokens compiles the adapted and the forward-only stages; a pass over tokens on the GPU whose deadline
    strikes after some batches compiles nothing more."""
    h, model = default_model(TTT_BATCH_DOCS="4")
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._inductor.compile(gm, example_inputs)
    torch._dynamo.reset()
    fwd = train_gpt.StagedForward(model, lambda fn, **kw: torch.compile(fn, backend=backend, **kw))
    luts = tuple(t.cuda() for t in (torch.ones(h.vocab_size, dtype=torch.long), torch.zeros(h.vocab_size, dtype=torch.bool),
                                   torch.zeros(h.vocab_size, dtype=torch.bool)))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    warm = train_gpt.warm_up_documents(h, 1, h.vocab_size, 1, torch.Generator().manual_seed(0)).cuda()
    rates = train_gpt.ttt_warm_up(model, fwd, warm, luts, h, 1, autocast, torch.cuda.synchronize)  # every plan chunk
    # adapted: embedding, block (2: its input without and with gradient), head; forward only: 3
    assert len(graphs) == 7, graphs
    lengths = [3000, 2500, 1900, 700, 300, 260, 256, 100, 40, 33, 2, 1]
    tokens = torch.randint(2, h.vocab_size, (sum(lengths) + 1,))
    at = 0
    for n in lengths:
        tokens[at] = 1
        at += n
    calls, fast = iter(range(10**6)), train_gpt.Rates(1e12, 1e12)  # one second a reading: strikes after a batch
    loss, _, info = evaluate_ttt(model, tokens.cuda(), luts, h, 1, autocast, fwd, deadline=2.5, rates=fast,
                                 clock=lambda: float(next(calls)))
    print(f"rates {rates}; {info}")
    assert len(graphs) == 7 and 0 < len(info["unadapted"]) < len(lengths) and info["tokens"] == sum(lengths)


def test_hessians_fp32_and_gptq_does_not_raise():
    h, model = default_model(NUM_LAYERS="2")
    g = torch.Generator(device="cuda").manual_seed(0)
    batches = [(torch.randint(0, h.vocab_size, (8, 1024), device="cuda", generator=g),) * 2 for _ in range(2)]
    hessians = collect_hessians(model, batches, torch.autocast("cuda", dtype=torch.bfloat16))
    assert all(H.dtype == torch.float32 for H in hessians.values())
    hessians["blocks.0.o"] = torch.eye(512, device="cuda") - 50 * torch.ones(512, 512, device="cuda") / 512
    fallbacks = {}
    quantized_tensors(model, h, 0.4, hessians, fallbacks)
    assert fallbacks.get("blocks.0.o") == "rtn"


@pytest.mark.skipif(train_gpt.flash_attn_func is None, reason="FlashAttention 3 not installed")
def test_flash_attention_agrees_with_sdpa():
    assert train_gpt.check_flash_attention(torch.device("cuda")).startswith("flash_attn_3: agrees")
