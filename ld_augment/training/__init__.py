"""Stage: training -- train or fine-tune LMNet, LINet and the VQ on a folder of annotated cases.

`train_lmnet`, `train_linet`, `train_vq` (one function per job, CLI `ld-augment train lmnet|linet|vq`) share one
loop (`loop.fit`: AdamW, EMA, DDP under torchrun via `distributed`, atomic resumable state, JSONL log,
TensorBoard, PNG `samples`) and one crop dataset (`crops.CropDataset`) over cases from `sources` (case folders
of `data`, the original's list files, nnU-Net raw datasets). The VQ-GAN objective is in `vq`. Two recipes
(`recipe`): "released" trains as the original did (its items in `released_items`, its LRs, optimisers and EMA
continuation; the default for a released init), "ours" is this project's.
Final weights are our checkpoint format (`nets.load_checkpoint`),
with the text encoder recorded in `meta["extra"]["text_encoder"]` = {"name", "id", "options"}, so inference
rebuilds it with `text.create_encoder(name, **options)`.
"""

from ld_augment.training.crops import DEFAULT_CROPS, CropDataset
from ld_augment.training.data import LoadedCase, TrainingCase, find_cases, load_case, normalize_hu
from ld_augment.training.sources import read_list_files, read_nnunet_dataset, read_training_data
from ld_augment.training.linet import train_linet
from ld_augment.training.lmnet import train_lmnet
from ld_augment.training.loop import EMA, TrainOptions, fit
from ld_augment.training.recipe import RECIPES, Recipe, get_recipe
from ld_augment.training.setup import RunOptions, TrainResult, resolve_config
from ld_augment.training.vq import VQGANOptions, train_vq

__all__ = [
    "DEFAULT_CROPS", "EMA", "RECIPES", "CropDataset", "LoadedCase", "Recipe", "RunOptions", "TrainOptions", "TrainResult", "TrainingCase",
    "VQGANOptions", "find_cases", "fit", "load_case", "normalize_hu", "read_list_files", "read_nnunet_dataset",
    "get_recipe", "read_training_data", "resolve_config", "train_linet", "train_lmnet", "train_vq",
]  # fmt: skip
