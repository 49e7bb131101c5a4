"""`CudaDeviceRule`: CUDA's device-mixing rule, checked on a CPU-only machine.

On a GPU, a tensor made without ``device=`` (``torch.tensor(x)``, ``torch.zeros(n)``,
``torch.as_tensor(array)``, ``t.cpu()``) lives on the CPU, and the first op that mixes it with the
model's CUDA tensors raises. On a CPU-only machine every tensor is on the CPU, so such bugs hide
until the first GPU run. This mode makes them visible without a GPU:

* every tensor created inside the mode *without an explicit device* (or moved with ``.cpu()`` /
  ``.to("cpu")``) is tagged a **stray**: the tensor that would sit on the CPU on a GPU machine.
  Everything else (the model's parameters, tensors made with ``device=<a torch.device>`` or moved
  with ``.to(device)``, tensors made before the mode) stands for a GPU tensor. An explicit
  ``torch.device`` is trusted: a test runs the model on ``torch.device("cpu")``, so a
  ``device=some_tensor.device`` cannot be told from ``device=torch.device("cpu")``; only the
  string ``"cpu"`` marks an intended CPU tensor;
* a stray tag propagates: an op whose tensor inputs are all strays makes strays (it would run
  on the CPU), an op with any GPU input makes GPU tensors, an in-place op keeps its target's tag;
* CUDA's rule is applied to every torch call: an op may mix strays with GPU tensors only when
  every stray is 0-dim (a CPU scalar tensor joins elementwise ops), never in ``cat``/``stack``;
  CPU index tensors may index a GPU tensor (``t[idx]``, ``t[idx] = v``), and ``copy_`` crosses
  devices. Anything else raises `DeviceMixError` naming the op and the first caller in this repo.

It is a ``TorchFunctionMode``: it sees every torch call made from Python (ours, transformers',
peft's) at the top level; calls nested inside a torch function run without it, so torch's own
internals (optimizers' foreach kernels, ``F.*`` decompositions) are never second-guessed.
Imports only torch and the standard library.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._device import _device_constructors

REPO = str(Path(__file__).resolve().parents[1])
_TAG = "_device_rule_stray"
_FACTORIES = _device_constructors() | {torch.from_numpy}
_CONCATS = {
    torch.cat,
    torch.concat,
    torch.concatenate,
    torch.stack,
    torch.hstack,
    torch.vstack,
    torch.dstack,
    torch.column_stack,
    torch.row_stack,
}
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
_COPIES = {torch.Tensor.copy_}
_TO_CPU = {torch.Tensor.cpu}
_TO_DEVICE = {
    torch.Tensor.to,
    torch.Tensor.cuda,
    torch.Tensor.type_as,
    torch.Tensor.new_tensor,
    torch.Tensor.new_zeros,
    torch.Tensor.new_ones,
    torch.Tensor.new_full,
    torch.Tensor.new_empty,
}


class DeviceMixError(RuntimeError):
    """An op that CUDA would refuse: a CPU tensor (made without a device) meets the model's device."""


def is_stray(tensor: torch.Tensor) -> bool:
    """Would this tensor sit on the CPU on a GPU machine?"""
    return bool(getattr(tensor, _TAG, False))


def _tag(value: Any, stray: bool) -> None:
    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            try:
                setattr(leaf, _TAG, stray)
            except (AttributeError, RuntimeError):  # e.g. a tensor subclass without a __dict__
                pass


def _names_cpu(device: Any) -> bool:
    return isinstance(device, str) and device.split(":")[0] == "cpu"


def _caller() -> str:
    """The innermost frame of this repo's code (not this module) that made the call."""
    frame = sys._getframe(2)
    first = None
    while frame is not None:
        path = frame.f_code.co_filename
        where = f"{path}:{frame.f_lineno} in {frame.f_code.co_name}"
        if first is None:
            first = where
        if path.startswith(REPO) and not path.endswith("device_rule.py") and "/.venv/" not in path:
            return where
        frame = frame.f_back
    return first or "?"


class CudaDeviceRule(TorchFunctionMode):
    """Raise `DeviceMixError` on every op CUDA would refuse (see the module docstring).

    ``with CudaDeviceRule(): agent.learn(1)`` on a model that sits on the CPU.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        strays = [t for t in inputs if is_stray(t)]
        others = [t for t in inputs if not is_stray(t)]
        if strays and others:
            self._check(func, args, strays, others)
        out = func(*args, **kwargs)
        stray = self._stray_output(func, args, kwargs, inputs, strays, others)
        if any(out is t and is_stray(t) != stray for t in inputs):  # ``.to(device)``/``.cpu()`` on the CPU
            out = out.view_as(out)  # return the same object; on a GPU they make a new one, the old one stays
        _tag(out, stray)
        return out

    @staticmethod
    def _check(func, args, strays, others) -> None:
        if func in _COPIES:
            return
        if func in _INDEXING:  # CPU indices may index a GPU tensor; a GPU index never a CPU tensor
            target = args[0]
            values = [args[2]] if func is torch.Tensor.__setitem__ and isinstance(args[2], torch.Tensor) else []
            if not is_stray(target) and all(not is_stray(v) or v.dim() == 0 for v in values):
                return
            if is_stray(target) and not any(
                not is_stray(t) and t.dim() > 0 for t in pytree.tree_leaves(args[1:]) if isinstance(t, torch.Tensor)
            ):
                return
        elif func not in _CONCATS and all(t.dim() == 0 for t in strays):
            return  # a CPU scalar tensor may join an op on the GPU
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
        raise DeviceMixError(
            f"{name} mixes {len(strays)} CPU tensor(s) {[tuple(t.shape) for t in strays][:4]} with "
            f"{len(others)} tensor(s) on the model's device {[tuple(t.shape) for t in others][:4]}; on a GPU "
            f"this raises. Called from {_caller()}. Make the tensor on the model's device "
            f"(device=..., or .to(device))."
        )

    @staticmethod
    def _stray_output(func, args, kwargs, inputs, strays, others) -> bool:
        if func in _TO_CPU:
            return True
        if func in _TO_DEVICE:
            device = kwargs.get("device", args[1] if len(args) > 1 else None)
            if isinstance(device, torch.Tensor):
                return is_stray(device)
            if device is None or isinstance(device, torch.dtype):  # .to(dtype): stays where it is
                return bool(strays) and not others if func is torch.Tensor.to else False
            return _names_cpu(device)
        if func in _FACTORIES and not (inputs and func in (torch.as_tensor, torch.asarray)):
            return "device" not in kwargs or kwargs["device"] is None or _names_cpu(kwargs["device"])
        if func in _FACTORIES:  # as_tensor of a tensor: where it was, unless moved
            device = kwargs.get("device")
            return is_stray(inputs[0]) if device is None else _names_cpu(device)
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__") and args and isinstance(args[0], torch.Tensor):
            return is_stray(args[0])  # in place: the target stays where it is
        if func is torch.Tensor.__setitem__:
            return is_stray(args[0])
        return bool(strays) and not others
