"""Shim that nnU-Net finds through `nnUNet_extTrainer=<this folder>`; the trainers live in nnunet_trainers.trainer.

nnU-Net (>= 2.8) splits nnUNet_extTrainer on os.pathsep (":" on Linux/macOS, ";" on Windows), puts each folder
on sys.path while it imports every module there, and looks for the trainer class by name.
"""
from nnunet_trainers.trainer import *  # noqa: F401,F403
from nnunet_trainers.gain.trainers import *  # noqa: F401,F403  (the gain benchmark's nnUNetTrainerLDBench)
from nnunet_trainers.trainer import __getattr__  # noqa: F401  run-identity variants (..._r050_<bank>) by name
