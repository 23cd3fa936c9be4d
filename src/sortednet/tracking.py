"""What training's loggers and evaluation's outputs share about W&B: whether it can log online. A module of its
own so that evaluation needs no part of the training stack (:mod:`sortednet.training.loggers` is Lightning's)."""

from __future__ import annotations

import netrc
import os


def wandb_credentials() -> bool:
    """Whether W&B can log online: an API key in the environment or in ~/.netrc (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
