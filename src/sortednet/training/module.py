"""The LightningModule: a sorted model, an objective, the optimizer and the per-exit metrics.

The module is handed the net it trains, built once by :func:`sortednet.objectives.build_net` (``sortednet.train``
builds it, with the tokenizer and the data); it loads nothing itself. The one exception is FSDP: the net comes on
the meta device, and ``configure_model`` shards it and fills it from ``load_full`` on rank 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import lightning as L
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric

from sortednet.checkpoint import RECORD_KEY, Metadata
from sortednet.config import LossConfig, ModelConfig, ObjectiveConfig, TrainConfig
from sortednet.errors import SortedNetError
from sortednet.flops import train_step_flops
from sortednet.lora import lora_state
from sortednet.loss import count_labels
from sortednet.model import SortedLM
from sortednet.objectives import train_exits
from sortednet.schedule import ExitSchedule
from sortednet.training.compat import non_persistent_buffer_names


def cosine_with_warmup(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then a half cosine down to ``min_lr_ratio`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class SortedModule(L.LightningModule):
    """Trains ``net`` (a :class:`~sortednet.model.SortedLM` with its objective applied, exits ``exits``: the output
    of :func:`sortednet.objectives.build_net`) with the loss of its objective.

    ``eval_exits`` (every exit of the set) are reported in validation whatever the objective;
    ``train_exits`` are the exits the loss is taken at (:func:`sortednet.objectives.train_exits`). ``model`` and
    ``objective`` are the configs the net was built from, recorded in checkpoints. Under FSDP ``net`` is on the meta
    device and ``load_full`` builds it with its weights (called on rank 0 only).
    """

    def __init__(
        self,
        net: SortedLM,
        exits: list[int],
        model: ModelConfig,
        objective: ObjectiveConfig,
        loss: LossConfig | None = None,
        optimizer: Callable | None = None,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        activation_checkpointing: bool = False,
        mixed_precision: bool = False,
        prompt_style: str = "alpaca",
        compile_layers: bool = False,
        precision: str | None = None,
        load_full: Callable[[], SortedLM] | None = None,
    ):
        super().__init__()
        self.model_config, self.objective, self.loss_config = model, objective, loss or LossConfig()
        self.optimizer_factory, self.load_full = optimizer, load_full
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        # mixed_precision: FSDP2 computes in bf16 over the parameters' own dtype (fp32 master weights)
        self.mixed_precision = mixed_precision
        self.prompt_style = prompt_style  # recorded in checkpoints, so inference formats prompts the same way
        self.precision = precision  # trainer.precision, recorded in checkpoints
        self.save_hyperparameters(
            {
                "model": dataclasses.asdict(model),
                "objective": dataclasses.asdict(objective),
                "loss": dataclasses.asdict(self.loss_config),
                "exits": list(exits),
            }
        )
        self._step_sums: dict = {}  # the running optimizer step's per-exit loss (see _step_token_mean)
        # A LoRA checkpoint holds the adapters only; resuming loads them over the freshly loaded base model.
        self.strict_loading = not model.lora.rank
        if activation_checkpointing:  # per decoder layer; non-reentrant, so FSDP2 hooks stay in order
            net.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if compile_layers:
            # One graph per decoder layer (all layers share its code, so it compiles once), before FSDP wraps each
            # layer; the multi-exit loss, whose row counts change every batch, stays eager.
            for layer in net.decoder.layers:
                layer.compile()
        self.net, self.eval_exits = net, list(exits)
        self.train_exits = train_exits(self.objective.name, exits)
        self.schedule = ExitSchedule(self.train_exits, self.loss_config)
        self.val_loss = torch.nn.ModuleDict({str(e): MeanMetric() for e in exits})
        # agreement with the deepest exit (below it only): expected acceptance and greedy agreement per position
        self.val_accept = torch.nn.ModuleDict({str(e): MeanMetric() for e in exits[:-1]})
        self.val_agree = torch.nn.ModuleDict({str(e): MeanMetric() for e in exits[:-1]})

    # ---------------------------------------------------------------- model
    def configure_model(self) -> None:
        """Under ModelParallelStrategy (``self.device_mesh`` set) shard the net with FSDP2 and load it; otherwise the
        net came built."""
        if self.device_mesh is not None:
            self._shard(self.device_mesh["data_parallel"])

    def _shard(self, mesh) -> None:
        """FSDP2: one unit per decoder layer, the rest (embeddings, final norm, LM head, ICT heads) in the root
        unit, so the shared norm and head are gathered once per step and serve every exit.

        The model is built on the meta device, sharded, materialised empty, and filled from rank 0's full
        state dict (``broadcast_from_rank0``): only rank 0 ever holds the whole model in host memory, and
        a broadcast works on every backend (gloo on CPU included), where a per-rank load would need the
        whole checkpoint in every rank's memory.
        """
        if isinstance(self.net, FSDPModule):  # configure_model runs again for validate/test
            return
        if self.load_full is None or not next(self.net.parameters()).is_meta:
            raise SortedNetError("FSDP shards a net built on the meta device with load_full; build it with meta=True")
        net = self.net
        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if self.mixed_precision else None,
            reduce_dtype=torch.float32 if self.mixed_precision else None,
        )
        for layer in net.decoder.layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(net, mesh=mesh, mp_policy=policy)
        # The loss reaches the decoder, norm and heads through this method, not forward: make it the root's
        # forward, so the root is gathered before it and its gradients are reduced after the loss's backward.
        register_fsdp_forward_method(net, "exit_losses")
        register_fsdp_forward_method(net, "exit_metrics")
        device = self.trainer.strategy.root_device
        net.to_empty(device=device)
        _rebuild_non_persistent_buffers(net, device)
        full = self.load_full().state_dict() if self.global_rank == 0 else {}
        set_model_state_dict(net, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    def metadata(self) -> Metadata:
        """What a checkpoint needs to be used without its training config (:mod:`sortednet.checkpoint`)."""
        return Metadata(
            objective=self.objective.name,
            exits=list(self.eval_exits),
            num_layers=self.net.num_layers,
            exit_heads=sorted(int(e) for e in self.net.exit_heads) if self.net.exit_heads else [],
            # a QLoRA base's quantization_config holds enums that weights-only loading refuses; it is served
            # unquantized anyway (``quantization`` records how it was trained)
            hf_config={k: v for k, v in self.net.lm.config.to_dict().items() if k != "quantization_config"},
            model=self.model_config.name_or_path,
            tokenizer=self.model_config.tokenizer or self.model_config.name_or_path,
            prompt_style=self.prompt_style,
            precision=self.precision,
            lora=dataclasses.asdict(self.model_config.lora) if self.model_config.lora.rank else None,
            quantization=self.model_config.quantization,
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[RECORD_KEY] = self.metadata().to_record()
        if self.model_config.lora.rank:  # the frozen base is model.name_or_path; store what was trained
            checkpoint["state_dict"] = lora_state(self)

    # ---------------------------------------------------------------- steps
    def on_fit_start(self) -> None:
        total = int(self.trainer.estimated_stepping_batches)
        self.schedule = ExitSchedule(self.train_exits, self.loss_config, total_steps=total)

    def training_loss(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The loss of optimizer step ``step`` (its exits and weights from the schedule), and per-exit values."""
        exits = self.schedule.active(step)
        loss, losses = self.net.exit_losses(
            batch["input_ids"], batch["attention_mask"], batch["labels"], exits, self.schedule.weights(exits),
            self.loss_config.distill,
        )  # fmt: skip
        # Own heads (ICT) of exits left out of this step still join the graph, with weight 0, so that
        # DDP/FSDP never see an unused parameter.
        for e in self.train_exits:
            if e not in exits and self.net.head(e) is not self.net.lm_head:
                loss = loss + 0.0 * self.net.head(e).weight.sum()
        return loss, losses

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, losses = self.training_loss(batch, self.global_step)
        ids = batch["input_ids"]
        n_labels = count_labels(batch["labels"])
        loss, step_end = self._step_token_mean(loss, losses, n_labels, batch)
        frozen, adapters = self.objective.name == "ict", self.model_config.lora.rank > 0
        # read by the throughput callback for TFLOP/s and MFU
        self.flops_per_batch = train_step_flops(
            self.net.lm.config, len(losses), ids.numel(), n_labels, ids.shape[1], frozen, adapters
        )
        if step_end:
            self._log_step_losses(ids.shape[0])
        return loss

    def _step_token_mean(self, loss, losses, n_labels: int, batch: dict) -> tuple[torch.Tensor, bool]:
        """Rescale a micro-batch's loss so the optimizer step's gradient is that of one token mean over every
        label token of the step — all its micro-batches on all ranks — as one process on the whole global batch
        would compute it (the gradient-accumulation fix of transformers 4.46); Lightning divides each
        micro-batch's loss by the accumulation count and DDP/FSDP average over ranks, so both are multiplied
        back. The step's token count comes from the data module (``step_label_tokens``: it knows the step's rows
        before the first of them is trained); without it each micro-batch is its own step, counted over ranks.
        Adds this micro-batch's share to the step's per-exit losses; returns the loss and whether the step ends.
        """
        world, accumulate = self.trainer.world_size, self.trainer.accumulate_grad_batches
        if "step_label_tokens" in batch:
            n_step, step_end = int(batch["step_label_tokens"]), bool(batch["step_end"])
        else:
            n_step, accumulate, step_end = n_labels, 1, True
            if world > 1:
                count = torch.tensor(float(n_labels), device=loss.device)  # NCCL reduces CUDA tensors only
                n_step = int(self.trainer.strategy.reduce(count, reduce_op="sum"))
        share = n_labels / max(n_step, 1)
        for e, value in [("all", loss.detach()), *losses.items()]:
            self._step_sums[e] = self._step_sums.get(e, 0.0) + value.detach().float() * share
        return loss * (share * accumulate * world), step_end

    def _log_step_losses(self, batch_size: int) -> None:
        """Log the step's per-exit token-mean losses (summed over ranks: each rank holds its rows' share)."""
        sums, self._step_sums = self._step_sums, {}
        values = torch.stack([torch.as_tensor(v) for v in sums.values()])
        if self.trainer.world_size > 1:
            values = self.trainer.strategy.reduce(values, reduce_op="sum")
        logged = dict(zip(sums, values, strict=True))
        total = logged.pop("all")
        self.log_dict({f"train/loss_exit_{e}": v for e, v in logged.items()}, batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        n_tokens = count_labels(batch["labels"])
        if n_tokens == 0:
            return
        losses, agreement = self.net.exit_metrics(
            batch["input_ids"], batch["attention_mask"], batch["labels"], self.eval_exits
        )
        for e, value in losses.items():
            self.val_loss[str(e)].update(value, weight=n_tokens)
        for e, (accept, agree) in agreement.items():
            self.val_accept[str(e)].update(accept / n_tokens, weight=n_tokens)
            self.val_agree[str(e)].update(agree.float() / n_tokens, weight=n_tokens)

    def on_validation_epoch_end(self) -> None:
        last = self.eval_exits[-1]
        # compute() syncs over ranks: every rank must call it, or none. A rank whose validation rows had no label
        # tokens adds a weight-0 update (nothing to the mean) instead of skipping the collective the others wait in.
        updated = torch.tensor([float(self.val_loss[str(e)].update_count > 0) for e in self.eval_exits])
        if self.trainer.world_size > 1:
            updated = self.trainer.strategy.reduce(updated.to(self.device), reduce_op="sum").cpu()
        for e, any_rank in zip(self.eval_exits, updated.tolist(), strict=True):
            if not any_rank:
                continue
            value = self._compute(self.val_loss[str(e)])
            self.log(f"val/loss_exit_{e}", value)
            self.log(f"val/ppl_exit_{e}", torch.exp(value))
            if e == last:
                self.log("val/loss", value, prog_bar=True)
            else:
                self.log(f"val/accept_exit_{e}", self._compute(self.val_accept[str(e)]))
                self.log(f"val/agree_exit_{e}", self._compute(self.val_agree[str(e)]))

    def _compute(self, metric: MeanMetric) -> torch.Tensor:
        """The metric's mean over ranks, then reset; a rank without updates adds weight 0 to the collective."""
        if metric.update_count == 0:
            metric.update(torch.zeros((), device=self.device), weight=0.0)
        value = metric.compute()
        metric.reset()
        return value

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise SortedNetError("no optimizer configured; pick one, e.g. optimizer=adamw")
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        schedule = cosine_with_warmup(
            self.warmup_steps, int(self.trainer.estimated_stepping_batches), self.min_lr_ratio
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"},
        }


def _rebuild_non_persistent_buffers(module: torch.nn.Module, device: torch.device) -> None:
    """Recompute buffers that are not in the state dict (rotary ``inv_freq``), which ``to_empty`` left as
    garbage, by constructing their modules afresh from the model config."""
    for sub in module.modules():
        names = non_persistent_buffer_names(sub)
        if not names:
            continue
        if not hasattr(sub, "config"):
            raise SortedNetError(f"cannot rebuild the buffers {names} of {type(sub).__name__} after meta-device init")
        with torch.device(device):
            fresh = type(sub)(sub.config)
        for name in names:
            setattr(sub, name, getattr(fresh, name).to(getattr(sub, name).dtype))


def build_module(
    cfg: TrainConfig,
    net: SortedLM,
    exits: list[int],
    optimizer: Callable | None = None,
    load_full: Callable[[], SortedLM] | None = None,
) -> SortedModule:
    """The LightningModule of a run, over the net built from its config (:func:`sortednet.objectives.build_net`) and
    its optimizer factory (``instantiate(cfg.optimizer)``)."""
    return SortedModule(
        net,
        exits,
        cfg.model,
        cfg.objective,
        cfg.loss,
        optimizer=optimizer,
        warmup_steps=cfg.warmup_steps,
        min_lr_ratio=cfg.min_lr_ratio,
        activation_checkpointing=cfg.strategy.activation_checkpointing,
        mixed_precision=cfg.strategy.name == "fsdp" and str(cfg.trainer.get("precision")) == "bf16-mixed",
        prompt_style=cfg.data.prompt_style,
        compile_layers=bool(cfg.trainer.get("compile", False)),
        precision=str(cfg.trainer.get("precision", "32-true")),
        load_full=load_full,
    )
