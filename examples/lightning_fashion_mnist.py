"""MLCL on Fashion-MNIST (5 coarse -> 10 fine) with Lightning: one head per level, views made on the device.

    pip install 'mlcl[lightning]'
    python examples/lightning_fashion_mnist.py                                  # one device
    python examples/lightning_fashion_mnist.py --devices 2 --strategy ddp       # 2 processes (GPUs, or CPU with gloo)

Per-head losses and temperatures go to the logger (TensorBoard when installed, else CSV) in --out.
"""

from __future__ import annotations

import argparse
from functools import partial

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from mlcl import MultiHeadProjector, MultiLevelSupConLoss
from mlcl.data.augment import ImageAugment, make_views
from mlcl.data.registry import load_dataset
from mlcl.lightning import ContrastiveModule
from mlcl.models.encoders import SmallCNN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto", help="auto, ddp, ... (Lightning's strategies)")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, gpu")
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256, help="per process")
    parser.add_argument("--limit-train", type=int, default=None, help="a stratified subset of the training images")
    parser.add_argument("--out", default="runs/lightning")
    args = parser.parse_args()

    L.seed_everything(0)
    data = load_dataset("fashion-mnist", val_size=0, limit_train=args.limit_train)
    # (N, 2) labels: one column per head
    labels = torch.stack([data.train.targets["coarse"], data.train.targets["fine"]], dim=1)
    loader = DataLoader(TensorDataset(data.train.inputs, labels), batch_size=args.batch_size, shuffle=True,
                        drop_last=True)  # the loss gathers across processes: every batch must be full

    encoder = SmallCNN(in_channels=1, width=32, out_dim=128)
    projector = MultiHeadProjector(128, n_heads=2, hidden_dim=256, out_dim=64, head_names=["coarse", "fine"])
    loss = MultiLevelSupConLoss(temperatures=[0.3, 0.1], weights=[0.5, 1.0], gather_distributed=True)
    views = partial(make_views, n_views=2, augment=ImageAugment(crop_padding=2, hflip=True, erase_prob=0.1))
    module = ContrastiveModule(encoder, projector, loss, views=views, lr=2e-3)

    on_gpus = torch.cuda.is_available() and args.accelerator in ("auto", "gpu", "cuda")
    trainer = L.Trainer(accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
                        max_steps=args.max_steps, default_root_dir=args.out, log_every_n_steps=1,
                        sync_batchnorm=args.devices > 1 and on_gpus,  # torch's SyncBatchNorm needs GPUs
                        enable_checkpointing=False)
    trainer.fit(module, loader)
    log_dir = trainer.log_dir  # a collective call: every process asks
    if trainer.is_global_zero:
        print(f"trained {trainer.global_step} steps; logs in {log_dir}")
    if torch.distributed.is_initialized():  # Lightning leaves the group open; gloo's threads must stop before exit
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
