"""Optimizers beyond torch's, as ``_partial_`` targets for the ``optimizer`` group: bitsandbytes' 8-bit AdamW.

8-bit AdamW keeps both moments in 8 bits with block-wise scales (2 bytes per parameter instead of 8);
tensors under 4,096 elements keep 32-bit states. The paged variant moves states to host memory under
pressure through CUDA unified memory, so it needs CUDA.
"""

from __future__ import annotations

import functools

import torch

from sortednet.errors import SortedNetError


def _bitsandbytes():
    try:
        import bitsandbytes  # lazy: an optional extra (sortednet[bnb]), needed by the 8-bit optimizers only
    except ImportError as error:
        raise SortedNetError(
            "8-bit optimizers need bitsandbytes, which is not installed; pip install 'sortednet[bnb]' "
            "(or bitsandbytes), or use optimizer=adamw"
        ) from error
    return bitsandbytes


def adamw8bit(params, **kwargs) -> torch.optim.Optimizer:
    return _bitsandbytes().optim.AdamW8bit(params, **kwargs)


def paged_adamw8bit(params, **kwargs) -> torch.optim.Optimizer:
    _require_cuda()
    return _bitsandbytes().optim.PagedAdamW8bit(params, **kwargs)


def _require_cuda(accelerator: str = "auto") -> None:
    if accelerator == "cpu" or not torch.cuda.is_available():
        raise SortedNetError(
            "optimizer=paged_adamw8bit pages its states through CUDA unified memory and needs a CUDA GPU; "
            "on CPU use optimizer=adamw8bit"
        )


def check(factory, accelerator: str = "auto") -> None:
    """Fail now, with one line, if ``factory`` (a partial optimizer) cannot be built on this machine."""
    func = factory.func if isinstance(factory, functools.partial) else factory
    if func in (adamw8bit, paged_adamw8bit):
        _bitsandbytes()
    if func is paged_adamw8bit:
        _require_cuda(accelerator)
