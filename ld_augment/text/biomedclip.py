"""The original's text encoder: BiomedCLIP's PubMedBERT text tower (open_clip ``HFTextEncoder``), fully offline.

Built from a LOCAL folder holding the BERT config and tokenizer (packaged: ``ld_augment/resources/biomedclip``)
plus the user's ``open_clip_pytorch_model.bin`` (BiomedCLIP-PubMedBERT_256-vit_base_patch16_224). The tower is
built with ``pretrained=False`` from the local config, so no hub lookup happens and nothing in ``os.environ``
needs changing; only the checkpoint's ``text.*`` keys are loaded (the vision tower is never built).

The tower has 109.7 M parameters and a 256-token forward costs ~1 s on CPU, while the conditioning strings come
from a closed vocabulary: embeddings are cached per string (LRU), so a training run computes each phrase once.
Padding is trimmed to the longest string of a call (default) -- the attention mask already hides padding, so
the pooled vector is unchanged up to float rounding (tested) and a call is ~20x cheaper.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ld_augment.errors import CheckpointError, InputError, MissingDependencyError
from ld_augment.resources import biomedclip_dir
from ld_augment.text.base import AttributeEncoder

ENCODER_ID = "biomedclip-pubmedbert-256"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"
HUB_NAME = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
CONTEXT_LENGTH = 256
OUTPUT_DIM = 512
_TOKENIZER_FILES = ("config.json", "vocab.txt", "tokenizer_config.json")
_INSTALL_HINT = "pip install 'open_clip_torch>=2.24' 'transformers>=4.40'"


def _import_open_clip() -> tuple[Any, Any]:
    try:
        from open_clip.hf_model import HFTextEncoder
        from open_clip.tokenizer import HFTokenizer
    except ImportError as exc:  # open_clip present but transformers missing raises at construction instead
        raise MissingDependencyError(
            f"the BiomedCLIP text encoder needs open_clip and transformers ({_INSTALL_HINT}): {exc}"
        ) from exc
    return HFTextEncoder, HFTokenizer


def resolve_weights(weights: str | Path) -> Path:
    """The weights file itself, or ``open_clip_pytorch_model.bin`` inside a given folder; readable error if absent."""
    path = Path(weights).expanduser()
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise MissingDependencyError(
            f"BiomedCLIP weights file {path} not found. Download {WEIGHTS_FILE} of {HUB_NAME} "
            f"(Hugging Face) and pass its path (or its folder) as weights=..."
        )
    return path


def load_text_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The text tower's weights from a full open_clip checkpoint: ``text.*`` keys, prefix stripped.

    ``position_ids`` (a non-persistent buffer in recent transformers, saved by older versions) is dropped.
    """
    path = resolve_weights(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise CheckpointError(f"{path} is not a readable PyTorch weights file: {exc}") from exc
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} does not hold a state dict (got {type(raw).__name__})")
    text = {k[len("text."):]: v for k, v in raw.items() if isinstance(k, str) and k.startswith("text.")}
    text = {k: v for k, v in text.items() if not k.endswith("position_ids")}
    if not text:
        sample = ", ".join(list(map(str, raw))[:5])
        raise CheckpointError(
            f"{path} has no 'text.*' keys (is it an open_clip BiomedCLIP checkpoint?); first keys: {sample}"
        )
    return text


def build_text_tower(config_dir: str | Path | None = None) -> tuple[Any, Any]:
    """(HFTextEncoder with random weights, HFTokenizer) from a local folder; nothing is downloaded."""
    folder = Path(config_dir) if config_dir is not None else biomedclip_dir()
    missing = [name for name in _TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise InputError(
            f"BiomedCLIP config folder {folder} lacks {', '.join(missing)} (needs {', '.join(_TOKENIZER_FILES)})"
        )
    HFTextEncoder, HFTokenizer = _import_open_clip()
    try:
        tower = HFTextEncoder(str(folder), output_dim=OUTPUT_DIM, proj_type="mlp",
                              pooler_type="cls_last_hidden_state_pooler", pretrained=False)
    except RuntimeError as exc:
        if "transformers" in str(exc):
            raise MissingDependencyError(f"the BiomedCLIP text encoder needs transformers ({_INSTALL_HINT})") from exc
        raise
    tokenizer = HFTokenizer(str(folder), context_length=CONTEXT_LENGTH)
    return tower, tokenizer


class BiomedCLIPEncoder(AttributeEncoder):
    """Frozen BiomedCLIP text tower: one pooled 512-d vector per attribute string (the original's context).

    ``weights``: path to ``open_clip_pytorch_model.bin`` or its folder (required unless ``random_weights``, which
    is for tests and benchmarks). The tower always stays in eval mode (BERT dropout would make the context
    random) and has ``requires_grad=False``; embeddings are cached on CPU per string (``cache_size`` entries).
    """

    encoder_id = ENCODER_ID
    output_dim = OUTPUT_DIM

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        config_dir: str | Path | None = None,
        random_weights: bool = False,
        cache_size: int = 4096,
        trim_padding: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if weights is None and not random_weights:
            raise MissingDependencyError(
                f"the BiomedCLIP text encoder needs its weights file {WEIGHTS_FILE} ({HUB_NAME}); pass weights=<path>, "
                "or use the offline encoder ('vocab') which needs no download"
            )
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_size = int(cache_size)
        self.cache_hits = 0
        self.cache_misses = 0
        state = load_text_state_dict(weights) if weights is not None else None
        self.tower, self.tokenizer = build_text_tower(config_dir)
        if state is not None:
            self._load(state, str(weights))
        self.tower.requires_grad_(False)
        self.tower.eval()
        self.tower.to(device)
        self.weights_path = None if weights is None else str(resolve_weights(weights))
        self.trim_padding = bool(trim_padding)

    def _load(self, state: dict[str, torch.Tensor], source: str) -> None:
        own = self.tower.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [f"{k}: file {tuple(state[k].shape)} vs tower {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
            if shapes:
                parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
            raise CheckpointError(f"{source}: text.* weights do not fit the BiomedCLIP text tower: {'; '.join(parts)}")
        self.tower.load_state_dict(state, strict=True)
        self.clear_cache()

    def options(self) -> dict[str, Any]:
        return {"weights": self.weights_path, "trim_padding": self.trim_padding}

    def train(self, mode: bool = True) -> BiomedCLIPEncoder:
        super().train(mode)
        self.tower.eval()  # frozen: never dropout
        return self

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def device(self) -> torch.device:
        return next(self.tower.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, 256] token ids (or trimmed to the longest sequence when ``trim_padding``)."""
        ids = self.tokenizer(list(texts))
        if self.trim_padding:
            pad = self.tower.config.pad_token_id
            length = int((ids != pad).sum(dim=1).max())
            ids = ids[:, : max(length, 1)]
        return ids

    @torch.no_grad()
    def _compute(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tower(self.tokenize(texts).to(self.device)).float().cpu()

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        self.cache_misses += len(todo)
        self.cache_hits += len(texts) - len(todo)
        if todo:
            for text, vector in zip(todo, self._compute(todo)):
                self._cache[text] = vector
        out = torch.stack([self._cache[t] for t in texts])
        for text in texts:  # LRU: mark used, then drop the oldest beyond capacity
            self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out.to(self.device)
