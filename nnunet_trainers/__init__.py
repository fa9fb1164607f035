"""nnU-Net v2 side of ld-augment: `nnUNetTrainerLesionDiffusion` and how nnU-Net finds it.

Importing this package does not import nnU-Net; `nnunet_trainers.trainer` does. nnU-Net finds the trainer
through `nnUNet_extTrainer=<path of nnunet_trainers/ext_trainer_dir>` (see `nnunet_trainers.shim.ext_trainer_dir`)
or through a shim module installed into nnunetv2 with `ld-augment nnunet install-shim`.
"""
