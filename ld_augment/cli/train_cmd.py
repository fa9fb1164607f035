"""`ld-augment train lmnet|linet|vq`: train from scratch or fine-tune (parsing only; see ld_augment.training)."""

from __future__ import annotations

import argparse
import os

from ld_augment.cli.common import parse_crop

NETWORKS = ("lmnet", "linet", "vq")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune LMNet, LINet or the VQ on annotated cases",
        description="DATA is one of: a folder per case with label.nii.gz (0 bg / 1 organ / 2 lesion), "
        "totalseg.nii.gz (or totalseg_v1.nii.gz; v1 or v2 ids), report.json (type.json) and, for linet/vq, "
        "ct.nii.gz; a folder with the original's list files (train_img_list.txt or train_image_list.txt, train_label_list.txt, "
        "train_type_list.txt, train_seg_list.txt and the val_* ones; --split picks which); or an nnU-Net raw "
        "dataset (imagesTr/, labelsTr/, organ maps in totalsegTr/, reports in reportsTr/ or derived). Writes "
        "OUT/<net>.pt (final weights, EMA), OUT/<net>_train_state.pt (resumable) and OUT/<net>_log.jsonl. "
        "Running the same command again resumes where it stopped. Multi-GPU / multi-node: "
        "torchrun --nproc_per_node=N [--nnodes M --rdzv-endpoint HOST:PORT] --no-python ld-augment train ...",
    )
    p.add_argument("network", choices=NETWORKS)
    p.add_argument("--data", required=True, help="folder of training cases")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="tiny | released | a nets preset name | a config JSON file "
                   "(default: the --init checkpoint's config, else released)")
    p.add_argument("--init", help="weights to fine-tune: our checkpoint or the authors' released .ckpt")
    p.add_argument("--vq", help="linet: the frozen VQ (our vq.pt, VQ.ckpt or LINet.ckpt; default: from --init)")
    p.add_argument("--vq-config", help="linet: size of a released --vq file (tiny | released | JSON; default released)")
    p.add_argument("--encoder", default=None, help="text encoder for lmnet/linet: vocab (default) or biomedclip "
                   "(required with a released --init)")
    p.add_argument("--encoder-weights", help="BiomedCLIP open_clip_pytorch_model.bin (or its folder)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=1, help="per process and micro-batch; the global batch is "
                   "batch-size x processes x grad-accum")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches accumulated per optimizer step")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up")
    p.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this value")
    p.add_argument("--tensorboard", action="store_true", help="TensorBoard scalars in OUT/tensorboard/")
    p.add_argument("--sample-every", type=int, default=0, help="PNG samples of a fixed crop in OUT/samples/ "
                   "every N steps (0: none)")
    p.add_argument("--split", default="train", choices=("train", "val"), help="list-file DATA: which lists")
    p.add_argument("--sampling", default="random", choices=("random", "sequential"), help="random: a random "
                   "case per sample (the original's random_sample); sequential: every case once per epoch")
    p.add_argument("--iter-num", type=int, default=None, help="samples per epoch with --sampling random")
    g = p.add_argument_group("vq objective")
    g.add_argument("--perceptual-weight", type=float, default=1.0, help="LPIPS weight (0: off)")
    g.add_argument("--vgg16-weights", help="torchvision's VGG16 ImageNet file vgg16-397923af.pth (for LPIPS)")
    g.add_argument("--lpips-weights", help="LPIPS linear layers (default: the lpips package's vgg.pth)")
    g.add_argument("--disc-weight", type=float, default=0.5, help="GAN weight (0: no discriminators)")
    g.add_argument("--disc-start", type=int, default=50001, help="steps before the discriminators switch on")
    g.add_argument("--disc-lr", type=float, default=None, help="discriminator learning rate (default --lr)")
    g.add_argument("--disc-norm", default="batch", choices=("batch", "group", "none"))
    g.add_argument("--disc-layers", type=int, default=3, help="PatchGAN depth (crop sides >= 3 * 2^layers)")
    g.add_argument("--disc-channels", type=int, default=64, help="PatchGAN base width")
    g.add_argument("--codebook-weight", type=float, default=1.0)
    p.add_argument("--recipe", default="auto", choices=("auto", "released", "ours"),
                   help="released: the original's training (LR 2e-5 LMNet / 2e-6 LINet / 1e-4 VQ x processes x batch "
                   "x grad-accum, its optimisers, crops on the largest lesion at native spacing, its texts, the "
                   "released EMA continued); ours: this project's (README, Training recipes); auto (default): "
                   "released when --init is a released .ckpt, else ours")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's; released: scaled "
                   "by the global batch as the original)")
    p.add_argument("--ema-decay", type=float, default=None, help="EMA decay (default 0.9999; vq: no EMA); 0 = off")
    p.add_argument("--crop", type=parse_crop, help="crop size in voxels, e.g. 64x152x152 (lmnet) or 128 (linet/vq)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500, help="write the resumable state every N steps")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue from OUT/<net>_train_state.pt when present (default)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over, overwriting OUT")
    p.add_argument("--allow-pickle", action="store_true", help="allow --init/--vq files that hold pickled "
                   "objects (only for files you trust)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


VQ_ONLY = ("vgg16_weights", "lpips_weights", "disc_lr")


def run(args: argparse.Namespace) -> int:
    from ld_augment.errors import ConfigError
    from ld_augment.training import RunOptions, VQGANOptions, read_training_data, train_linet, train_lmnet, train_vq

    need = {"lmnet": ("label", "seg", "report"), "linet": ("label", "seg", "report", "ct"),
            "vq": ("ct", "label") if args.recipe == "released" else ("ct",)}  # released VQ crops: on lesions
    cases = read_training_data(args.data, need=need[args.network], split=args.split)
    run_opts = RunOptions(grad_accum=args.grad_accum, warmup_steps=args.warmup_steps, grad_clip=args.grad_clip,
                          tensorboard=args.tensorboard, sample_every=args.sample_every, sampling=args.sampling,
                          iter_num=args.iter_num)
    common = dict(config=args.config, init=args.init, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                  device=args.device, precision=args.precision, seed=args.seed, save_every=args.save_every,
                  resume=args.resume, num_workers=args.num_workers, progress=not args.no_progress,
                  allow_pickle=args.allow_pickle, run=run_opts, cases=cases,
                  recipe=None if args.recipe == "auto" else args.recipe)
    if args.ema_decay is not None:
        common["ema_decay"] = args.ema_decay or None
    if args.crop is not None:
        common["crop_size"] = args.crop
    if args.network == "vq":
        if args.encoder or args.encoder_weights or args.vq or args.vq_config:
            raise ConfigError("train vq takes no --encoder/--encoder-weights/--vq/--vq-config (use --init/--config)")
        gan = VQGANOptions(codebook_weight=args.codebook_weight, perceptual_weight=args.perceptual_weight,
                           vgg16_weights=args.vgg16_weights, lpips_linear_weights=args.lpips_weights,
                           disc_weight=args.disc_weight, disc_start=args.disc_start, disc_lr=args.disc_lr,
                           disc_norm=args.disc_norm, disc_layers=args.disc_layers,
                           disc_channels=args.disc_channels)
        result = train_vq(args.data, args.out, gan=gan, **common)
    else:
        if any(getattr(args, k) is not None for k in VQ_ONLY):
            raise ConfigError("--vgg16-weights/--lpips-weights/--disc-lr are for train vq")
        common["encoder"] = args.encoder or "vocab"
        if args.encoder_weights:
            common["encoder_options"] = {"weights": args.encoder_weights}
        if args.network == "lmnet":
            if args.vq or args.vq_config:
                raise ConfigError("--vq/--vq-config are for train linet (LMNet works in image space)")
            result = train_lmnet(args.data, args.out, **common)
        else:
            result = train_linet(args.data, args.out, vq=args.vq, vq_config=args.vq_config, **common)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final weights: {result.checkpoint} (last loss {result.last_loss}, {result.world_size} process(es))")
    return 0
