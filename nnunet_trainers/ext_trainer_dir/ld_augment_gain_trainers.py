"""Shim that nnU-Net finds through `nnUNet_extTrainer`: the gain benchmark's trainer (nnunet_trainers.gain)."""
from nnunet_trainers.gain.trainers import *  # noqa: F401,F403
