"""What sortednet relies on in the private parts of Lightning and torch (:mod:`sortednet.training.compat`): each test
fails when an upgrade changes it."""

from __future__ import annotations

import sys

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from sortednet.training import compat


def test_the_subprocess_launcher_is_recognised_and_reruns_the_hydra_command_line(tmp_path, monkeypatch):
    ddp = L.Trainer(strategy="ddp", devices=2, accelerator="cpu", logger=False)
    assert compat.spawns_ranks_by_rerunning_the_script(ddp.strategy)
    assert compat.launched_rank_processes(ddp) == []  # the children appear in fit
    assert ddp.strategy.launcher.procs == []
    single = L.Trainer(devices=1, accelerator="cpu", logger=False)
    assert not compat.spawns_ranks_by_rerunning_the_script(single.strategy)
    assert compat.launched_rank_processes(single) == []

    # sortednet.train.one_job_ranks rewrites sys.argv and hydra.run.dir for one job of a sweep; the launcher
    # must build the children's command line from exactly those.
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from lightning.fabric.strategies.launchers.subprocess_script import _hydra_subprocess_cmd

    (tmp_path / "conf.yaml").write_text("x: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose("conf", overrides=[f"hydra.run.dir={tmp_path / 'job'}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    monkeypatch.setattr(sys, "argv", ["sortednet/train.py", "exits=[4,8]", "logger=csv"])
    command, _ = _hydra_subprocess_cmd(local_rank=1)
    assert command[-5:-3] == ["exits=[4,8]", "logger=csv"] and command[-3] == f'hydra.run.dir="{tmp_path / "job"}"'


def test_non_persistent_buffers_are_named():
    class Rotary(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("inv_freq", torch.ones(4), persistent=False)
            self.register_buffer("kept", torch.ones(4))
            self.register_buffer("unset", None, persistent=False)

    rotary = Rotary()
    assert compat.non_persistent_buffer_names(rotary) == ["inv_freq"]
    assert set(rotary.state_dict()) == {"kept"}  # what the name set stands for


class _Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.loaders_built = 0

    def train_dataloader(self):
        self.loaders_built += 1
        return DataLoader(torch.randn(4, 2), batch_size=2)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Rebuild(L.Callback):
    def on_train_start(self, trainer, pl_module):
        trainer.fit_loop.setup_data()  # a loader that exists is kept
        assert pl_module.loaders_built == 1
        compat.rebuild_train_loader(trainer)
        trainer.fit_loop.setup_data()
        assert pl_module.loaders_built == 2


def test_the_fit_loop_builds_its_train_loader_again_when_asked():
    model = _Model()
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[_Rebuild()],
    )  # fmt: skip
    trainer.fit(model)
    assert model.loaders_built == 2 and trainer.global_step == 1
