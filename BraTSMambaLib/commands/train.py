"""`brats-mamba train`: nnU-Net v2 training of a registry model with the study's settings."""
from __future__ import annotations

import argparse

NAME = "train"
HELP = "train a registry model inside nnU-Net v2 (AdamW, bf16/fp16, Dice+BCE regions, status.jsonl)"
DESCRIPTION = """\
Trains fold F of an nnU-Net dataset (planned with `brats-mamba plan`) with the trainer
nnUNetTrainer<Model>, the same as the stock command

  nnUNet_extTrainer=<BraTSMambaLib/training/trainers> nnUNetv2_train N 3d_fullres F -tr nnUNetTrainerUMambaBot

Study settings: AdamW (eps 1e-4), learning rate per model (1e-3 for U-Mamba), bf16 autocast where
the GPU supports it (else fp16 with a gradient scaler), Dice + BCE on the regions WT/TC/ET, deep
supervision. A checkpoint is written after every epoch, so --continue after an interruption (also
kill -9) loses at most one epoch. Every epoch appends to RUN/status.jsonl and redraws
RUN/progress.png; watch it with `brats-mamba status RUN --follow`.

Examples:
  brats-mamba train 500 --model umambabot --fold 0 --epochs 400
  brats-mamba train 500 --model segmamba --fold 0 --time-budget 3600 --continue
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset id (e.g. 500) or name")
    parser.add_argument("--model", required=True, help="registry model (see `brats-mamba models`)")
    parser.add_argument("--fold", default="0", help="fold 0-4 or 'all' (default 0)")
    parser.add_argument("--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("--epochs", type=int, help="number of epochs (nnU-Net default 1000; the study 400/800)")
    parser.add_argument("--iters", type=int, help="training iterations per epoch (default 250)")
    parser.add_argument("--val-iters", type=int, help="validation iterations per epoch (default min(50, iters/5))")
    parser.add_argument("--lr", type=float, help="initial learning rate (default per model)")
    parser.add_argument("--adam-eps", type=float, help="AdamW epsilon (default 1e-4)")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 3e-5)")
    parser.add_argument("--no-deep-supervision", action="store_true", help="train the full-resolution head only")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS",
                        help="stop after the epoch that would exceed this wall-clock training time (the LR schedule "
                             "is fitted to the epochs that fit)")
    parser.add_argument("--device", default="auto", help="auto, cuda, cpu or mps (default auto)")
    parser.add_argument("--num-gpus", type=int, default=1, help="data-parallel GPUs (nnU-Net DDP; batch divisible)")
    parser.add_argument("--continue", dest="cont", action="store_true", help="resume from the latest checkpoint")
    parser.add_argument("--no-validation", action="store_true", help="skip nnU-Net's full-case validation at the end")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (CUDA)")
    parser.add_argument("--da-processes", type=int, help="data-augmentation workers (nnUNet_n_proc_DA; 0 = in-process)")
    parser.add_argument("--raw", help="nnUNet_raw folder (default: $nnUNet_raw)")
    parser.add_argument("--preprocessed", help="nnUNet_preprocessed folder (default: $nnUNet_preprocessed)")
    parser.add_argument("--results", help="nnUNet_results folder (default: $nnUNet_results)")


def run(args: argparse.Namespace) -> int:
    from BraTSMambaLib.training.planning import set_nnunet_paths
    from BraTSMambaLib.training.run import TrainSettings, train

    set_nnunet_paths(args.raw, args.preprocessed, args.results)
    settings = TrainSettings(epochs=args.epochs, iters=args.iters, val_iters=args.val_iters, lr=args.lr,
                             adam_eps=args.adam_eps, weight_decay=args.weight_decay,
                             deep_supervision=False if args.no_deep_supervision else None,
                             time_budget_s=args.time_budget)
    out = train(args.dataset, args.model, args.fold, plans=args.plans, settings=settings, device=args.device,
                num_gpus=args.num_gpus, continue_training=args.cont, validate=not args.no_validation,
                compile=args.compile, da_processes=args.da_processes)
    print(f"run folder: {out}")
    return 0
