"""The training frameworks as they are installed from PyPI, each run on a mount and on a local disk
with the same seed: Hugging Face Trainer (save_total_limit, then resume), Lightning ModelCheckpoint
(save_top_k, save_last="link", then resume), accelerate save_state/load_state, and DCP async_save.
Tiny models from configs: nothing is downloaded. The tensors saved and resumed must be equal."""

from __future__ import annotations

import os
import stat

import pytorch_lightning as lightning
import torch


def _equal(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for key in left:
        if isinstance(left[key], torch.Tensor):
            assert torch.equal(left[key], right[key]), key
        elif isinstance(left[key], dict):
            _equal(left[key], right[key])


# -- Hugging Face Trainer ---------------------------------------------------------------------
def _hf_train(output: str, steps: int, resume: bool = False) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16))
    generator = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (32, 16), generator=generator)]
    arguments = TrainingArguments(output_dir=output, max_steps=steps, save_steps=2, save_total_limit=2,
                                  per_device_train_batch_size=4, report_to="none", use_cpu=True, seed=0,
                                  logging_steps=100, dataloader_num_workers=0, disable_tqdm=True)
    Trainer(model=model, args=arguments, train_dataset=data).train(resume_from_checkpoint=True if resume else None)


def test_hugging_face_trainer_rotates_and_resumes_as_on_a_local_disk(mount, tmp_path):
    from safetensors.torch import load_file

    on_mount, on_disk = mount.path("hf_run"), str(tmp_path / "hf_run")
    for output in (on_mount, on_disk):
        _hf_train(output, 6)
    assert sorted(os.listdir(on_mount)) == sorted(os.listdir(on_disk)) == ["checkpoint-4", "checkpoint-6"]
    for name in ("model.safetensors",):
        _equal(load_file(os.path.join(on_mount, "checkpoint-6", name)),
               load_file(os.path.join(on_disk, "checkpoint-6", name)))
    _equal(torch.load(os.path.join(on_mount, "checkpoint-6", "optimizer.pt")),
           torch.load(os.path.join(on_disk, "checkpoint-6", "optimizer.pt")))
    rotated = mount.path(".versions", "hf_run", "checkpoint-2")
    assert os.stat(rotated).st_mode & stat.S_ISVTX  # rotated away: shown as deleted in the history
    for output in (on_mount, on_disk):
        _hf_train(output, 8, resume=True)
    _equal(load_file(os.path.join(on_mount, "checkpoint-8", "model.safetensors")),
           load_file(os.path.join(on_disk, "checkpoint-8", "model.safetensors")))


# -- Lightning ----------------------------------------------------------------------------------
class _Tiny(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, _):  # noqa: ANN001
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.Adam(self.parameters(), lr=0.01)


def _lightning_fit(directory: str, steps: int, resume: bool = False) -> _Tiny:
    from pytorch_lightning.callbacks import ModelCheckpoint

    lightning.seed_everything(0, verbose=False)
    model = _Tiny()
    generator = torch.Generator().manual_seed(1)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 8, generator=generator),
                                                                      torch.randn(64, 1, generator=generator)),
                                       batch_size=8)
    checkpoints = ModelCheckpoint(dirpath=directory, save_top_k=2, monitor="loss", save_last="link",
                                  every_n_train_steps=2)
    trainer = lightning.Trainer(max_steps=steps, callbacks=[checkpoints], logger=False, enable_progress_bar=False,
                                enable_model_summary=False, accelerator="cpu", default_root_dir=directory)
    trainer.fit(model, data, ckpt_path="last" if resume else None)
    return model


def test_lightning_model_checkpoint_with_a_last_link_and_resume_as_on_a_local_disk(mount, tmp_path):
    on_mount, on_disk = mount.path("pl_run"), str(tmp_path / "pl_run")
    models = [_lightning_fit(directory, 6) for directory in (on_mount, on_disk)]
    _equal(models[0].state_dict(), models[1].state_dict())
    assert os.path.islink(os.path.join(on_mount, "last.ckpt"))
    assert sorted(os.listdir(on_mount)) == sorted(os.listdir(on_disk))
    saved = [torch.load(os.path.join(directory, "last.ckpt"), weights_only=False) for directory in (on_mount, on_disk)]
    _equal(saved[0]["state_dict"], saved[1]["state_dict"])
    resumed = [_lightning_fit(directory, 10, resume=True) for directory in (on_mount, on_disk)]
    _equal(resumed[0].state_dict(), resumed[1].state_dict())


# -- accelerate ---------------------------------------------------------------------------------
def test_accelerate_save_state_and_load_state(mount, tmp_path):
    from accelerate import Accelerator

    def state(directory: str, load: bool = False) -> dict:
        torch.manual_seed(0)
        accelerator = Accelerator(cpu=True)
        model = torch.nn.Linear(16, 4)
        optimizer = torch.optim.Adam(model.parameters())
        model, optimizer = accelerator.prepare(model, optimizer)
        if load:
            accelerator.load_state(directory)
        else:
            model(torch.randn(2, 16)).sum().backward()
            optimizer.step()
            accelerator.save_state(directory)
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict()["state"]}

    saved = {directory: state(directory) for directory in (mount.path("acc"), str(tmp_path / "acc"))}
    assert sorted(os.listdir(mount.path("acc"))) == sorted(os.listdir(tmp_path / "acc"))
    for directory, before in saved.items():
        _equal(state(directory, load=True), before)


# -- DCP async_save -------------------------------------------------------------------------------
def test_dcp_async_save_and_load(mount, tmp_path):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        state = {"w": torch.randn(256, 256), "b": torch.randn(256)}
        for directory in (mount.path("dcp"), str(tmp_path / "dcp")):
            dcp.async_save(state, checkpoint_id=directory).result()
            loaded = {"w": torch.zeros(256, 256), "b": torch.zeros(256)}
            dcp.load(loaded, checkpoint_id=directory)
            _equal(loaded, state)
        assert sorted(os.listdir(mount.path("dcp"))) == sorted(os.listdir(tmp_path / "dcp"))
    finally:
        dist.destroy_process_group()
