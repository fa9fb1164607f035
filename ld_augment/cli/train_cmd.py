"""`ld-augment train lmnet|linet|vq`: train from scratch or fine-tune (parsing only; see ld_augment.training)."""

from __future__ import annotations

import argparse

from ld_augment.cli.common import parse_crop

NETWORKS = ("lmnet", "linet", "vq")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune LMNet, LINet or the VQ on annotated cases",
        description="DATA holds one folder per case with label.nii.gz (0 bg / 1 organ / 2 lesion), totalseg.nii.gz "
        "(or totalseg_v1.nii.gz; v1 or v2 ids), report.json (type.json) and, for linet/vq, ct.nii.gz. Writes "
        "OUT/<net>.pt (final weights, EMA), OUT/<net>_train_state.pt (resumable) and OUT/<net>_log.jsonl. "
        "Running the same command again resumes where it stopped.",
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
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
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


def run(args: argparse.Namespace) -> int:
    from ld_augment.errors import ConfigError
    from ld_augment.training import train_linet, train_lmnet, train_vq

    common = dict(config=args.config, init=args.init, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                  device=args.device, precision=args.precision, seed=args.seed, save_every=args.save_every,
                  resume=args.resume, num_workers=args.num_workers, progress=not args.no_progress,
                  allow_pickle=args.allow_pickle)
    if args.ema_decay is not None:
        common["ema_decay"] = args.ema_decay or None
    if args.crop is not None:
        common["crop_size"] = args.crop
    if args.network == "vq":
        if args.encoder or args.encoder_weights or args.vq or args.vq_config:
            raise ConfigError("train vq takes no --encoder/--encoder-weights/--vq/--vq-config (use --init/--config)")
        result = train_vq(args.data, args.out, **common)
    else:
        common["encoder"] = args.encoder or "vocab"
        if args.encoder_weights:
            common["encoder_options"] = {"weights": args.encoder_weights}
        if args.network == "lmnet":
            if args.vq or args.vq_config:
                raise ConfigError("--vq/--vq-config are for train linet (LMNet works in image space)")
            result = train_lmnet(args.data, args.out, **common)
        else:
            result = train_linet(args.data, args.out, vq=args.vq, vq_config=args.vq_config, **common)
    print(f"final weights: {result.checkpoint} (last loss {result.last_loss})")
    return 0
