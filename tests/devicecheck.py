"""A second device on the CPU, for the tests: host/device mixing raises here as it does on CUDA.

On the CPU every tensor lives on one device, so code that indexes a host tensor with a device index, or combines a
host tensor with a device one, runs here and dies on the first GPU (PyTorch allows a device tensor indexed by a host
index, and host scalars in device ops, never the reverse: pytorch#69607). Meta and fake-CUDA tensors skip those
checks. Inside `OnDevice()` every tensor made on DEVICE (`device=DEVICE`, `.to(DEVICE)`, from a device tensor, or
marked with `put`) is a "device" tensor; the rest are host tensors. It raises `DeviceMixError` where CUDA would:

- a host tensor indexed (`[]`, `[] =`) by a device tensor;
- an operation taking a device tensor and a host tensor that is not a scalar (0-dim), e.g. `torch.cat`, `+`,
  `index_add_`, a matmul;
- a device tensor read as a Python value without `.item()`, `.tolist()` or `.cpu()` (`int()`, `float()`, `bool()`,
  `if t:`, `range(t)`, `.numpy()`): CUDA converts these with a silent host sync, which the harness keeps explicit.

The mark is a Python attribute carried by every result of an operation with a device input; `.cpu()`, `.to("cpu")`
and `.tolist()` give host values. DEVICE is `torch.device("cpu", 1)`: tensors made there live on the CPU (PyTorch
drops the index), while `tensor.device` of a device tensor answers DEVICE here, so code that takes its device from a
tensor (`torch.zeros(3, device=t.device)`) makes device tensors, as on a GPU. Inside autograd's backward nothing is
checked (the engine makes the gradients; they are marked by their parameter's `.grad`).

Not a TorchDispatchMode: the checks are on the Python-level calls the harness writes, which is where such bugs live.
Not a registered PrivateUse1 backend: PyTorch ships none that computes (its test backend, openreg, is not in the
wheel), and writing one means C++ kernels for every op the model uses.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

DEVICE = torch.device("cpu", 1)
MARK = "_on_test_device"


class DeviceMixError(RuntimeError):
    pass


def on_device(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, MARK, False)


def put(t: torch.Tensor) -> torch.Tensor:
    """Mark t (in place: parameters keep their identity) as living on DEVICE; returns it."""
    setattr(t, MARK, True)
    return t


def put_module(module: torch.nn.Module) -> torch.nn.Module:
    """Every parameter and buffer of the module on DEVICE (what `module.to("cuda")` would do)."""
    for t in [*module.parameters(), *module.buffers()]:
        put(t)
    return module


def _is_device(d) -> bool:
    if isinstance(d, str):
        d = torch.device(d)
    return isinstance(d, torch.device) and d == DEVICE


def _target_device(args, kwargs):
    """The device a .to(...) call moves to, or None when it names none (a dtype only)."""
    for a in [*args[1:], kwargs.get("device")]:
        if isinstance(a, (str, torch.device)):
            return a
        if isinstance(a, torch.Tensor):
            return DEVICE if on_device(a) else torch.device("cpu")
    return None


def _unmarked_copy(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(t.requires_grad) if t.is_leaf else t.clone()


def _describe(t: torch.Tensor) -> str:
    return f"{'device' if on_device(t) else 'host'} {t.dtype} {tuple(t.shape)}"


INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
TO_PYTHON = {torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__bool__, torch.Tensor.__index__,
             torch.Tensor.numpy, torch.Tensor.__complex__}
TO_HOST = {torch.Tensor.cpu}
EXPLICIT = {torch.Tensor.item, torch.Tensor.tolist}
FACTORIES_LIKE = {torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_full, torch.Tensor.new_empty,
                  torch.Tensor.new_tensor, torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like,
                  torch.rand_like, torch.randn_like, torch.randint_like}


class OnDevice(TorchFunctionMode):
    """The checks above, while active. `checked` counts the calls it looked at (a test can assert it saw work)."""

    def __init__(self):
        super().__init__()
        self.checked = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch._C._current_autograd_node() is not None:  # autograd's backward: the engine's tensors, unchecked
            out = func(*args, **kwargs)
            return self._mark(out) if any(on_device(t) for t in tree_leaves((args, kwargs))) else out
        self.checked += 1
        name = getattr(func, "__qualname__", getattr(func, "__name__", str(func)))
        if func == torch.Tensor.device.__get__:
            return DEVICE if on_device(args[0]) else func(*args, **kwargs)
        if func == torch.Tensor.grad.__get__:
            g = func(*args, **kwargs)
            return put(g) if g is not None and on_device(args[0]) else g
        if func in TO_PYTHON and on_device(args[0]):
            raise DeviceMixError(f"{name} of a {_describe(args[0])} tensor: a host value needs .item(), .tolist() or "
                                 ".cpu() (on CUDA an implicit sync)")
        if func in EXPLICIT:
            return func(*args, **kwargs)
        if func in TO_HOST:
            return _unmarked_copy(args[0])
        if func == torch.Tensor.to:
            target = _target_device(args, kwargs)
            if target is None:
                return self._mark(func(*args, **kwargs)) if on_device(args[0]) else func(*args, **kwargs)
            kwargs = {k: v for k, v in kwargs.items() if k != "device"}
            rest = [a for a in args[1:] if not isinstance(a, (str, torch.device, torch.Tensor))]
            out = func(args[0], *rest, **kwargs) if rest or kwargs else args[0]
            out = _unmarked_copy(out) if out is args[0] else out
            return put(out) if _is_device(target) else out
        if "device" in kwargs:  # a factory (torch.zeros, torch.arange, torch.tensor, new_zeros...)
            device = kwargs["device"]
            kwargs = {**kwargs, "device": torch.device("cpu")} if device is not None else kwargs
            out = func(*args, **kwargs)
            return self._mark(out) if _is_device(device) or device is None and func in FACTORIES_LIKE and \
                on_device(args[0]) else out
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func in INDEXING:
            target, index = args[0], [t for t in tree_leaves(args[1]) if isinstance(t, torch.Tensor)]
            if not on_device(target) and any(on_device(t) for t in index):
                raise DeviceMixError(f"a {_describe(target)} tensor indexed by a device index "
                                     f"({', '.join(_describe(t) for t in index)})")
            value = args[2:] if func == torch.Tensor.__setitem__ else ()
            tensors = [target, *[t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]]
        device = [t for t in tensors if on_device(t)]
        host = [t for t in tensors if not on_device(t) and t.dim() > 0]
        if device and host:
            raise DeviceMixError(f"{name} mixes {_describe(device[0])} with {_describe(host[0])}")
        out = func(*args, **kwargs)
        return self._mark(out) if device else out

    @staticmethod
    def _mark(out):
        return tree_map(lambda t: put(t) if isinstance(t, torch.Tensor) else t, out)
