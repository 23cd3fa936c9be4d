"""LightningDataModule over an Alpaca-format instruction data set."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from sortednet.config import DataConfig
from sortednet.data.alpaca import Collator, load_tokenized, pad_id, split
from sortednet.hub import default_cache_dir, resolve


class AlpacaDataModule(L.LightningDataModule):
    """Tokenizes (once, cached on disk) and serves an Alpaca-format data set.

    ``val_rows`` keeps the raw text of the validation split, for generation-based evaluation.
    """

    def __init__(self, config: DataConfig, tokenizer, cache_dir: str | None = None):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.cache_dir = cache_dir or str(default_cache_dir())
        self.train_set = self.val_set = None

    def _load(self):
        c = self.config
        path = resolve(c.path, "data.json", self.cache_dir)
        return load_tokenized(path, self.tokenizer, c.prompt_style, c.max_length, c.mask_prompt, self.cache_dir)

    def prepare_data(self) -> None:
        self._load()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        dataset = self._load()
        train_idx, val_idx = split(len(dataset), self.config.val_size, self.config.seed)
        self.train_set = dataset.select(train_idx).select_columns(["input_ids", "labels"])
        self.val_rows = dataset.select(val_idx)
        self.val_set = self.val_rows.select_columns(["input_ids", "labels"])

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=Collator(pad_id(self.tokenizer)),
            num_workers=self.config.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.config.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.config.eval_batch_size, shuffle=False)
