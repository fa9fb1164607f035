"""Training recipes: the original's ("released", the default whenever the initial weights are a released file)
and this project's own ("ours", the default from scratch and from our checkpoints).

A recipe is data: learning rate and its scaling, optimisers, what a fine-tune restores, how crops and texts
are built, and the VQ-GAN's switches. The released values come from reference/training/training_config.json
(each with its source line there): base LR LMNet 2e-5, LINet 2e-6, VQ 1e-4, multiplied by GPUs x batch x
gradient accumulation (the original's --scale_lr default); AdamW(0.9, 0.999, wd 0.01) on the UNets,
Adam(0.5, 0.9) without decay on both VQ optimisers; a fine-tune keeps training the raw `model.*` weights and
continues the released EMA with its update count; crops centred on the largest lesion at native spacing with
the released texts (``released_items``); fp32; the VQ's GAN switch counted in optimizer steps, LPIPS fed
[0, 1] slices with its dropout active.

Where ours departs on purpose (README, "Training recipes"): random crops around every lesion in the 1 mm grid
that inference works in, the report's own cavity and CT-value texts, one LR (1e-4) that is not scaled, and a
fresh EMA warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ld_augment.errors import ConfigError

RECIPES = ("released", "ours")
KINDS = ("lmnet", "linet", "vq")
RELEASED_BASE_LR = {"lmnet": 2e-5, "linet": 2e-6, "vq": 1e-4}
OURS_LR = 1e-4
OURS_SPACING = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Recipe:
    """Everything a recipe fixes for one network (see the module doc)."""

    name: str
    kind: str
    base_lr: float
    scale_lr: bool                      # lr = base_lr x world size x batch size x grad accumulation
    optimizer: str                      # "adamw" | "adam" (the main network; the VQ's discriminators: disc_*)
    betas: tuple[float, float]
    weight_decay: float
    items: str                          # CropDataset items: "released" | "ours"
    spacing: tuple[float, float, float] | None  # None: native spacing
    continue_ema: bool                  # a released init: keep training model.*, continue model_ema.* and its count
    linet_normaliser: str               # "enclosing": one box around every latent lesion voxel; "boxes": lesions' boxes
    disc_optimizer: str = "adam"
    disc_betas: tuple[float, float] = (0.5, 0.9)
    disc_weight_decay: float = 0.0
    disc_start_unit: str = "batches"
    lpips_input: str = "symmetric"
    lpips_dropout: bool = False

    def learning_rate(self, *, world_size: int = 1, batch_size: int = 1, grad_accum: int = 1) -> float:
        """The LR the optimizers get: the base, scaled by the global batch when the recipe says so."""
        scale = world_size * batch_size * grad_accum if self.scale_lr else 1
        return self.base_lr * scale

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "base_lr": self.base_lr, "scale_lr": self.scale_lr, "optimizer": self.optimizer,
                "betas": list(self.betas), "weight_decay": self.weight_decay, "items": self.items,
                "spacing": None if self.spacing is None else list(self.spacing), "continue_ema": self.continue_ema}


def released_recipe(kind: str) -> Recipe:
    """The original's training, per network (reference/training/training_config.json)."""
    _check(kind)
    vq = kind == "vq"
    return Recipe("released", kind, RELEASED_BASE_LR[kind], True, "adam" if vq else "adamw",
                  (0.5, 0.9) if vq else (0.9, 0.999), 0.0 if vq else 0.01, "released", None, True, "enclosing",
                  disc_start_unit="optimizer_steps", lpips_input="unit", lpips_dropout=True)


def our_recipe(kind: str) -> Recipe:
    """This project's recipe (from scratch and for our own checkpoints)."""
    _check(kind)
    return Recipe("ours", kind, OURS_LR, False, "adamw", (0.9, 0.999), 0.01, "ours", OURS_SPACING, False, "boxes",
                  disc_optimizer="adamw")


def get_recipe(kind: str, name: str | None, init_origin: str | None) -> Recipe:
    """The named recipe; None (auto): "released" when the initial weights are a released file, else "ours"."""
    if name is None or name == "auto":
        name = "released" if init_origin == "released" else "ours"
    if name not in RECIPES:
        raise ConfigError(f"unknown training recipe {name!r}; valid: auto, {', '.join(RECIPES)}")
    return released_recipe(kind) if name == "released" else our_recipe(kind)


def with_overrides(recipe: Recipe, **values: Any) -> Recipe:
    """The recipe with the options a user gave explicitly (None values are left as the recipe says)."""
    return replace(recipe, **{k: v for k, v in values.items() if v is not None})


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown network {kind!r}; valid: {', '.join(KINDS)}")
