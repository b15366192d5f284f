"""Host bookkeeping, device math: the evaluation, TTT (phases, the deadline, the non-finite re-score, the warm-up) and
the calibration run on tensors that tests/devicecheck.py marks as living on a second device, and raise where CUDA
would (a host tensor indexed by a device index, a host tensor in a device op, a device value read without .item()).
Before this check, every CUDA run with TTT died in ttt_batches (a host arange indexed by a CUDA argsort) after
training, and the CPU could not show it."""
import contextlib

import pytest
import torch

import test_ttt as tt
import train_gpt
from conftest import train_tiny
from devicecheck import DEVICE, DeviceMixError, OnDevice, put, put_module
from train_gpt import TokenStream, collect_hessians, evaluate, evaluate_ttt, load_hparams, quantized_tensors, shard_files

NO_AUTOCAST = torch.autocast("cpu", enabled=False)


def test_the_check_raises_where_cuda_raises_and_allows_what_it_allows():
    with OnDevice() as mode:
        host, dev = torch.arange(6), torch.arange(6, device=DEVICE)
        index = torch.tensor([0, 2], device=DEVICE)
        assert dev.device == DEVICE and host.device == torch.device("cpu")
        # allowed on CUDA: a device tensor indexed by a host index, host scalars in device ops, explicit conversions
        assert dev[torch.tensor([1, 3])].tolist() == [1, 3] and (dev + torch.tensor(2)).tolist()[0] == 2
        assert dev[index].device == DEVICE and dev.sum().item() == 15 and dev.cpu().device == torch.device("cpu")
        assert (host + dev.cpu()).tolist() == [0, 2, 4, 6, 8, 10] and torch.zeros(2, device=dev.device).device == DEVICE
        dev[torch.tensor([0])] = 7
        for bad in (lambda: host[index], lambda: torch.cat([host, dev]), lambda: host + dev, lambda: int(dev[0]),
                    lambda: bool(dev.sum() > 0), lambda: range(dev[1]), lambda: host.index_add_(0, index, dev[:2]),
                    lambda: dev.numpy(), lambda: host * dev.sum()):
            with pytest.raises(DeviceMixError):
                bad()
    assert mode.checked > 10


def on_device(model, *tensors):
    put_module(model)
    return [put(t.clone()) for t in tensors]


@pytest.mark.parametrize("env", [dict(TTT_PHASES=2, TTT_PHASE_DOCS=4, TTT_PHASE_LR=0.05), dict(TTT_LR=1e30),
                                 dict(TILT_ORDER=2)], ids=["phases", "nonfinite", "tilt"])
def test_ttt_and_its_deadline_keep_host_and_device_apart(env):
    """TTT with phases, with the non-finite re-score, and with a deadline that strikes after the first batch, its
    warm-up measuring the rates; the scores equal those of the same pass on host tensors."""
    h, model = tt.tiny(TTT_BATCH_DOCS=2, **env)
    tokens = tt.stream(n=1500)
    want = tt.scores(h, model, tokens)
    with OnDevice() as mode:
        dev_tokens, *luts = on_device(model, tokens, *tt.luts())
        per_target = torch.zeros(2, tokens.numel() - 1, dtype=torch.float64, device=DEVICE)
        loss, bpb, info = evaluate_ttt(model, dev_tokens, luts, h, tt.BOS, NO_AUTOCAST, per_target=per_target)
        same = {k: v for k, v in info.items() if k not in ("longest_segment_s", "hints_s")}  # times
        assert loss == pytest.approx(want[0], rel=1e-9) and same == {k: want[2][k] for k in same}
        assert (per_target[1] == 1).all().item()
        warm = train_gpt.warm_up_documents(h, 1, tt.VOCAB, tt.BOS, torch.Generator().manual_seed(0)).to(DEVICE)
        rates = train_gpt.ttt_warm_up(model, model, warm, luts, h, tt.BOS, NO_AUTOCAST, lambda: None)
        assert list(rates) == train_gpt.plan_chunks(h) and all(min(r) > 0 for r in rates.values())
        now, fast = [0.0], train_gpt.Rates(1e9, 1e9, 1.0)  # rates that cannot bring the deadline forward

        def clock():  # one fake second per reading: the deadline at 3 strikes after the first segment
            now[0] += 1.0
            return now[0]
        info = evaluate_ttt(model, dev_tokens, luts, h, tt.BOS, NO_AUTOCAST, deadline=3.0, rates=fast, clock=clock)[2]
        assert 0 < len(info["unadapted"]) < info["docs"] and info["forward_tokens"] > 0
    assert mode.checked > 1000
    assert "nonfinite" not in env or want[2]["nonfinite"], "an lr of 1e30 should make some document non-finite"


def test_sliding_window_keeps_host_and_device_apart():
    h, model = tt.tiny()
    tokens = tt.stream()

    def nll_fn(x, y):
        with torch.no_grad():
            return model(x, y, reduction="none")
    want = evaluate(nll_fn, tokens, tt.luts(), 48, 16, 4)
    with OnDevice():
        dev_tokens, *luts = on_device(model, tokens, *tt.luts())
        assert evaluate(nll_fn, dev_tokens, luts, 48, 16, 4) == pytest.approx(want, rel=1e-9)


def test_calibration_and_gptq_keep_host_and_device_apart(tiny_shards):
    """The calibration's batches come from the training stream to the device, the Hessians stay there, and GPTQ
    quantizes there (found here: it moved every matrix to "cuda" whatever the model's device, so a tool holding its
    model and Hessians on the CPU of a GPU machine mixed them)."""
    h = load_hparams({**tt.TINY, **tiny_shards.env, "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
                      "TRAIN_SEQ_LEN": "32"})
    model, _, _ = train_tiny(h, tiny_shards.data_path, 3)
    stream = TokenStream(shard_files(f"{tiny_shards.data_path}/fineweb_train_*.bin"), h.vocab_size)
    want = quantized_tensors(model, h, 0.3, collect_hessians(model, [stream.batch(4, 32, 0, 1, "cpu")],
                                                             contextlib.nullcontext()))
    stream = TokenStream(shard_files(f"{tiny_shards.data_path}/fineweb_train_*.bin"), h.vocab_size)
    with OnDevice():
        put_module(model)
        batches = [stream.batch(4, 32, 0, 1, DEVICE)]
        assert batches[0][0].device == DEVICE
        hessians = collect_hessians(model, batches, contextlib.nullcontext())
        assert all(H.device == DEVICE for H in hessians.values())
        got = quantized_tensors(model, h, 0.3, hessians)
    assert [n for n, _, _ in got] == [n for n, _, _ in want]
    assert all((a == b).all() for (_, _, a), (_, _, b) in zip(got, want))


def test_gptq_runs_with_tf32_off_and_restores_it(monkeypatch):
    """The run turns TF32 on for training; the Hessians and the GPTQ solve must not use it, and it is back after."""
    h, model = tt.tiny()
    seen, real = [], train_gpt.gptq

    def gptq(*args, **kwargs):
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return real(*args, **kwargs)
    monkeypatch.setattr(train_gpt, "gptq", gptq)
    hessians = collect_hessians(model, [(tt.stream()[None, :48], tt.stream()[None, 1:49])], contextlib.nullcontext())
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    quantized_tensors(model, h, 0.3, hessians)
    assert seen and not any(seen) and torch.backends.cuda.matmul.allow_tf32


def test_collectives_get_device_tensors(monkeypatch):
    """NCCL takes device tensors only (a host tensor raises "No backend type associated with device type cpu"; gloo,
    the CPU tests' backend, takes both): on two ranks, with phases and a deadline, every all-reduce of the TTT pass
    gets a device tensor (found in review: the phase-end flag was a host tensor)."""
    seen = []

    def all_reduce(t, op=None):
        seen.append(t)
        assert train_gpt.torch.is_tensor(t) and getattr(t, "_on_test_device", False), "a host tensor to NCCL"

    monkeypatch.setattr(train_gpt, "dist", type("TwoRanks", (), dict(
        is_initialized=staticmethod(lambda: True), get_rank=staticmethod(lambda: 0),
        get_world_size=staticmethod(lambda: 2), all_reduce=staticmethod(all_reduce), ReduceOp=torch.distributed.ReduceOp,
        all_gather_object=staticmethod(lambda out, obj: out.__setitem__(slice(None), [obj] * 2)))))
    h, model = tt.tiny(TTT_BATCH_DOCS=2, TTT_PHASES=2, TTT_PHASE_DOCS=2, TTT_PHASE_LR=0.05)
    with OnDevice():
        dev_tokens, *luts = on_device(model, tt.stream(n=1500), *tt.luts())
        evaluate_ttt(model, dev_tokens, luts, h, tt.BOS, NO_AUTOCAST, deadline=1e9, rates=train_gpt.Rates(1.0, 1.0, 1.0))
    assert len(seen) >= 4  # phase-end flags, phase steps' gradients, the sums
