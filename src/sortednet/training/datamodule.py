"""LightningDataModule over an Alpaca-format instruction data set, with a resumable, world-size-free order."""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from sortednet.config import DataConfig
from sortednet.data.alpaca import Collator, pad_id, tokenized_split
from sortednet.errors import SortedNetError
from sortednet.hub import default_cache_dir
from sortednet.loss import count_labels
from sortednet.training.compat import rebuild_train_loader


class GlobalOrderSampler(DistributedSampler):
    """This rank's share of one seeded global order, resumable mid-epoch.

    Every epoch draws one permutation of the whole train set from ``(seed, epoch)`` alone, cuts it into
    global micro-batches of ``batch_size x world_size`` rows, and rank r takes rows ``[r*b, (r+1)*b)`` of each.
    So the rows of every optimizer step are the same for 1 and N ranks at the same global batch size (a rank
    count never changes the data, only who computes it). The last, incomplete global batch is split as evenly
    as the ranks allow (a rank's share differs by at most one row); one with fewer rows than ranks is dropped,
    since a rank cannot train on nothing.

    The position is counted in rows of the global order (``consumed``), so a checkpoint resumes at the same
    row on any world size. It subclasses ``DistributedSampler`` only so that Lightning keeps it instead of
    injecting its own (it replaces any other sampler under ddp/fsdp).
    """

    def __init__(self, size: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.size, self.batch_size = size, batch_size
        self.consumed = 0  # rows of this epoch's global order that training has taken, over all ranks

    def _global_batches(self, start: int) -> list[list[int]]:
        """The epoch's global micro-batches from row ``start`` of its order on."""
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        width = self.batch_size * self.num_replicas
        batches = [order[i : i + width] for i in range(start, self.size, width)]
        if batches and len(batches[-1]) < self.num_replicas:
            batches.pop()
        return batches

    def step_of_next_batch(self, accumulate: int, label_counts: list[int]) -> tuple[int, bool]:
        """For the global micro-batch training takes next: the label tokens of its whole optimizer step (its
        group of ``accumulate`` micro-batches, all ranks; the epoch's last group may be shorter, as Lightning
        steps at the end of an epoch), and whether it is the step's last micro-batch. Every rank computes the
        same numbers from the shared global order, before the step's first row is trained."""
        batches = self._global_batches(0)
        index = self.consumed // (self.batch_size * self.num_replicas)
        first = index - index % accumulate
        group = batches[first : first + accumulate]
        tokens = sum(label_counts[row] for batch in group for row in batch)
        return tokens, index == first + len(group) - 1

    def _share(self, batch: list[int]) -> list[int]:
        if len(batch) == self.batch_size * self.num_replicas:
            return batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        base, extra = divmod(len(batch), self.num_replicas)  # the incomplete last batch
        start = self.rank * base + min(self.rank, extra)
        return batch[start : start + base + (self.rank < extra)]

    def __iter__(self) -> Iterator[int]:
        for batch in self._global_batches(self.consumed):
            yield from self._share(batch)

    def __len__(self) -> int:
        # The whole epoch's length, also when resumed mid-epoch: Lightning counts a resumed epoch's batches
        # from where the checkpoint left off, against this length.
        return sum(len(self._share(b)) for b in self._global_batches(0))

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def advance(self) -> None:
        """One global micro-batch was handed to training (on every rank at once)."""
        self.consumed = min(self.size, self.consumed + self.batch_size * self.num_replicas)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if (state["seed"], state["size"]) != (self.seed, self.size):
            raise SortedNetError(
                f"the checkpoint's data order (seed {state['seed']}, {state['size']} train rows) is not this run's "
                f"(seed {self.seed}, {self.size} rows); resume with the same seed, data.path and data.val_size"
            )
        self.epoch, self.consumed = state["epoch"], state["consumed"]


class _ResumableLoader(DataLoader):
    """A DataLoader Lightning counts as resumable (``state_dict``/``load_state_dict``: no warning about a
    mid-epoch checkpoint). The position it restores is the datamodule's, see :meth:`AlpacaDataModule.state_dict`."""

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


class AlpacaDataModule(L.LightningDataModule):
    """Tokenizes (once, cached on disk) and serves an Alpaca-format data set.

    ``val_rows`` keeps the raw text of the validation split, for generation-based evaluation. The train
    order is :class:`GlobalOrderSampler`'s, seeded by ``seed`` (the run's seed; ``data.seed`` by default).
    """

    def __init__(self, config: DataConfig, tokenizer, cache_dir: str | None = None, seed: int | None = None):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.cache_dir = cache_dir or str(default_cache_dir())
        self.seed = config.seed if seed is None else seed
        self.train_set = self.val_set = self.train_sampler = None
        self.restored_position: dict | None = None  # a checkpoint's train position, for the next sampler

    def prepare_data(self) -> None:
        tokenized_split(self.config, self.tokenizer, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        dataset, train_idx, val_idx = tokenized_split(self.config, self.tokenizer, self.cache_dir)
        self.train_set = dataset.select(train_idx).select_columns(["input_ids", "labels"])
        self.train_label_counts = [  # in chunks: the whole labels column as Python lists would be large
            count_labels(torch.tensor(labels))
            for chunk in self.train_set.iter(batch_size=1024)
            for labels in chunk["labels"]
        ]
        self.val_rows = dataset.select(val_idx)
        self.val_set = self.val_rows.select_columns(["input_ids", "labels"])

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        batch_size = self.config.batch_size
        # Re-created on reload with the position kept; the first one starts at a restored checkpoint's position.
        state = self.train_sampler.state_dict() if self.train_sampler is not None else self.restored_position
        self.train_sampler = GlobalOrderSampler(len(self.train_set), batch_size, world, rank, self.seed)
        if state is not None:
            self.train_sampler.load_state_dict(state)
        return _ResumableLoader(
            self.train_set,
            batch_size=batch_size,
            sampler=self.train_sampler,
            collate_fn=Collator(pad_id(self.tokenizer)),
            num_workers=self.config.num_workers,
        )

    def state_dict(self) -> dict:
        # The train position is saved here, not only in the fit loop's loader state: Lightning restores that one
        # only into a loader it builds after the restore, and sortednet's module builds it before (its cosine
        # schedule asks for estimated_stepping_batches), so a mid-epoch resume would start the epoch over.
        return {"train_position": self.train_sampler.state_dict()} if self.train_sampler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        # Called before the train loader is built (strategy=single|ddp) or after (fsdp restores after setup).
        self.restored_position = state.get("train_position")
        if self.restored_position and self.train_sampler is not None:
            self.train_sampler.load_state_dict(self.restored_position)
            # Its iterator already read a batch from the old position: have Lightning build the loader again
            # (fit starts with setup_data, which rebuilds when there is none).
            rebuild_train_loader(self.trainer)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.config.eval_batch_size,
            shuffle=False,
            collate_fn=Collator(pad_id(self.tokenizer)),
            num_workers=self.config.num_workers,
        )

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # Called once per batch the training loop takes (Lightning's fetcher reads one batch ahead, so the
        # sampler's own count would be one batch early): the position a checkpoint saves is exactly the
        # batches trained on.
        if self.trainer is not None and self.trainer.training and self.train_sampler is not None:
            # The step's label tokens, for a loss that is one token mean over the whole optimizer step
            # (sortednet.training.module.SortedModule._step_token_mean).
            accumulate = self.trainer.accumulate_grad_batches
            tokens, step_end = self.train_sampler.step_of_next_batch(accumulate, self.train_label_counts)
            batch["step_label_tokens"], batch["step_end"] = tokens, step_end
            self.train_sampler.advance()
        return batch
