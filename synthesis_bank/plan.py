"""The build plan: a deterministic list of work items (source x variant) and its stable split into shards.

Determinism is what makes `--resume` and `--shard` safe: every process, on any machine, derives the same case
ids, seeds and random choices from the recipe alone. Seeds and shard membership come from SHA-256 of stable
strings, never from Python's salted `hash()`, and each case's choices depend only on its own seed, so adding a
source does not change the other cases.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ld_augment.errors import ConfigError

from synthesis_bank.recipe import LLM, Recipe
from synthesis_bank.sources import Source, enumerate_sources, safe_id

SEED_SPACE = 2**32
#: Cases one plan may hold (each WorkItem is ~1 KB, each case minutes of synthesis): 10^6 is weeks of GPU time
#: and about 1 GB of plan, so anything beyond is a typo, refused before planning.
MAX_PLAN_ITEMS = 1_000_000


@dataclass(frozen=True)
class WorkItem:
    """One bank case to make: which source, which variant, and every random choice already drawn."""

    case_id: str
    source: Source
    variant: int
    seed: int
    organ: str
    lesion_type: str
    num_lesions: int
    attributes: Mapping[str, str] = field(default_factory=dict)
    llm_attributes: tuple[str, ...] = ()


def _digest_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def derive_seed(recipe_seed: int, source_id: str, variant: int) -> int:
    """The case seed: a stable hash of (recipe seed, source id, variant), in [0, 2**32)."""
    return _digest_int(f"ld-augment-bank/1|{recipe_seed}|{source_id}|{variant}") % SEED_SPACE


def make_case_id(source_id: str, variant: int) -> str:
    """`<source>_syn<variant>`: tells bank cases from the real ones when both sit in one dataset."""
    return f"{safe_id(source_id)}_syn{variant:03d}"


def _pick(rng: np.random.Generator, choices: Mapping[str, float]) -> str:
    names = list(choices)
    if len(names) == 1:
        return names[0]
    probs = np.asarray([choices[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=probs / probs.sum()))]


def plan_item(recipe: Recipe, source: Source, variant: int) -> WorkItem:
    """Draw one case's organ, lesion type, attributes and lesion count from its own seed."""
    seed = derive_seed(recipe.seed, source.source_id, variant)
    rng = np.random.default_rng(seed)
    organ = _pick(rng, recipe.organs)
    lesion_type = _pick(rng, recipe.lesion_types)
    attributes: dict[str, str] = {}
    llm: list[str] = []
    for name in sorted(recipe.attributes):
        spec: Any = recipe.attributes[name]
        if spec == LLM:
            llm.append(name)
        elif isinstance(spec, str):
            attributes[name] = spec
        else:
            attributes[name] = _pick(rng, spec)
    lo, hi = recipe.lesions_per_case
    num = int(rng.integers(lo, hi + 1))
    return WorkItem(make_case_id(source.source_id, variant), source, variant, seed, organ, lesion_type, num,
                    attributes, tuple(llm))


def plan_build(recipe: Recipe, sources: list[Source] | None = None) -> list[WorkItem]:
    """All work items of the recipe, sources in stable order, variants 0..variants_per_source-1."""
    sources = enumerate_sources(recipe) if sources is None else sources
    count = len(sources) * int(recipe.variants_per_source)  # counted before a single item is made
    if count > MAX_PLAN_ITEMS:
        raise ConfigError(f"{recipe.origin}: {len(sources)} source(s) x {recipe.variants_per_source} variant(s) = "
                          f"{count} cases; a build plans at most {MAX_PLAN_ITEMS}: lower variants_per_source or "
                          "split the sources into several banks")
    items = [plan_item(recipe, src, v) for src in sources for v in range(recipe.variants_per_source)]
    seen: dict[str, str] = {}
    for item in items:
        if item.case_id in seen and seen[item.case_id] != item.source.source_id:
            raise ConfigError(
                f"{recipe.origin}: sources {seen[item.case_id]!r} and {item.source.source_id!r} map to the same "
                f"case id {item.case_id!r}; rename one of them"
            )
        seen[item.case_id] = item.source.source_id
    return items


def shard_of(case_id: str, num_shards: int) -> int:
    """The shard a case belongs to: a stable hash of its id, so shards never overlap and need no coordination."""
    return _digest_int(f"shard|{case_id}") % num_shards


def select_shard(items: list[WorkItem], shard: tuple[int, int] | None) -> list[WorkItem]:
    if shard is None:
        return list(items)
    index, count = shard
    return [item for item in items if shard_of(item.case_id, count) == index]


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' (0-based i) -> (i, n); ConfigError otherwise."""
    try:
        index_text, count_text = text.split("/")
        shard = (int(index_text), int(count_text))
    except ValueError:
        raise ConfigError(f"--shard: expected 'i/n' with 0 <= i < n (e.g. 0/4), got {text!r}") from None
    return validate_shard(shard)


def validate_shard(shard: tuple[int, int]) -> tuple[int, int]:
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard {index}/{count}: need n >= 1 and 0 <= i < n")
    return index, count


def resolve_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    """An explicit shard, else torchrun's RANK/WORLD_SIZE when WORLD_SIZE > 1, else None (the whole plan)."""
    if shard is not None:
        return validate_shard(shard)
    world = os.environ.get("WORLD_SIZE")
    if not world:
        return None
    try:
        count, index = int(world), int(os.environ.get("RANK", "0"))
    except ValueError:
        raise ConfigError(f"RANK/WORLD_SIZE must be integers, got RANK={os.environ.get('RANK')!r} WORLD_SIZE={world!r}") from None
    return validate_shard((index, count)) if count > 1 else None
