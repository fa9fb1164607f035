"""`build_bank`: run the pipeline over a recipe's plan and write an nnU-Net v2 raw dataset plus a manifest.

Crash safety: each case is made in `out_dir/.work/<case_id>/`, its image and label are moved into
imagesTr/labelsTr with `os.replace` (no temporary names ever appear there for nnU-Net to pick up), then its
manifest line is appended, then dataset.json (which lists its cases) is rewritten. A case is finished iff it has
an "ok" line AND both files match the sizes and hashes on that line; anything else is redone by `--resume`, so a
kill -9 at any point costs at most the case in flight and leaves a valid nnU-Net dataset.

Safety against people: the output folder is locked for the build (synthesis_bank.lock), must be absent, empty or
one of our banks (synthesis_bank.bank_folder), and a resumed build must use the recipe and the shard layout of
the first one (two layouts would give one case id to two processes, each deleting the other's files).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ld_augment.errors import ConfigError, MissingDependencyError

from synthesis_bank import case_runner
from synthesis_bank.bank_folder import (
    WORK_DIR, check_layout, check_out_dir, clean_scratch, clean_work, marker_or_legacy, settle_layout, settle_recipe,
)
from synthesis_bank.lock import bank_lock, metadata_lock, shard_lock
from synthesis_bank.manifest import (
    MANIFEST, ManifestWriter, case_files_verified, image_path, label_path, latest_by_case, manifest_files,
    manifest_name, read_manifest, write_dataset_json,
)
from synthesis_bank.plan import WorkItem, plan_build, resolve_shard, select_shard
from synthesis_bank.recipe import Recipe, load_recipe

log = logging.getLogger(__name__)

#: Stop when the first this-many cases all failed with the same kind of error (it is not the sources' fault).
SAME_FAILURE_LIMIT = 3


@dataclass
class BuildSummary:
    """What one `build_bank` run did (this shard only)."""

    out_dir: Path
    manifest: Path
    shard: tuple[int, int] | None
    planned: int                      # cases in the whole plan
    assigned: int                     # cases of this shard
    done: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)   # finished by an earlier run, skipped
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (case_id, source_id, error)
    stopped: str | None = None        # why the build stopped early (a systemic failure), None if it ran through
    seconds: float = 0.0
    #: per-lesion quality gate over this run's cases: checked, passed_first, redrawn, dropped, failed_written
    quality: dict[str, int] = field(default_factory=dict)

    def count_quality(self, gate: dict[str, Any] | None) -> None:
        for key, value in (gate or {}).items():
            if isinstance(value, int):
                self.quality[key] = self.quality.get(key, 0) + value

    @property
    def ok(self) -> bool:
        return not self.failed and self.stopped is None

    def format_table(self) -> str:
        """A plain-text summary: counts by status, then one row per failed case with its error."""
        scope = f"shard {self.shard[0]}/{self.shard[1]}: " if self.shard else ""
        rows = [("synthesized", len(self.done)), ("already done (resume)", len(self.resumed)),
                ("failed", len(self.failed)), ("total", self.assigned)]
        lines = [f"synthesis bank {self.out_dir} ({scope}{self.assigned} of {self.planned} planned cases, "
                 f"{self.seconds:.1f} s)"]
        lines += [f"  {name:<24}{count:>6}" for name, count in rows]
        if self.failed:
            width = max(len(c) for c, _, _ in self.failed)
            lines.append("  failed cases:")
            lines += [f"    {c:<{width}}  source {s}: {e}" for c, s, e in self.failed]
        if self.quality:
            q = self.quality
            lines.append(f"  quality gate: {q.get('checked', 0)} lesions checked, {q.get('redrawn', 0)} redrawn, "
                         f"{q.get('dropped', 0)} dropped, {q.get('failed_written', 0)} written failing (recorded)")
        lines.append(f"  manifest: {self.manifest}")
        if self.stopped:
            lines.append(f"  STOPPED: {self.stopped}")
        return "\n".join(lines)


def _default_pipeline() -> tuple[Callable[..., Any], Callable[..., Any]]:
    try:
        from ld_augment.pipeline import preprocess_case, synthesize_case
    except ImportError as exc:
        raise MissingDependencyError(f"ld_augment.pipeline is not importable ({exc}); reinstall ld-augment") from exc
    return preprocess_case, synthesize_case


def _dataset_base(recipe: Recipe) -> dict[str, Any]:
    """dataset.json fields besides numTraining (which write_dataset_json derives from the manifest)."""
    from ld_augment import __version__

    return {
        "channel_names": {"0": "CT"},
        "labels": recipe.dataset_labels(),
        "numTraining": 0,
        "file_ending": ".nii.gz",
        "name": recipe.dataset_name,
        "description": recipe.description,
        "ld_augment": {"kind": "synthesis-bank", "version": __version__, "dataset_id": recipe.dataset_id,
                       "recipe_file": recipe.origin, "recipe": recipe.to_dict()},
    }


def _finished_elsewhere(out_dir: Path, case_id: str, own: Path) -> bool:
    """Another manifest calls the case "ok" (a shard of an older layout): its files are not ours to delete.
    A sharded build skips manifest.jsonl, which after a merge repeats its own lines."""
    for path in manifest_files(out_dir):
        if path == own or (own.name != MANIFEST and path.name == MANIFEST):
            continue
        entry = latest_by_case(read_manifest(path)).get(case_id)
        if entry is not None and entry.get("status") == "ok":
            return True
    return False


def _remove_case_files(out_dir: Path, case_id: str, own_manifest: Path) -> None:
    """Leftovers of an earlier attempt at one of THIS build's cases. The lock and the one shard layout per
    folder make the id ours; files another manifest vouches for are kept all the same."""
    if _finished_elsewhere(out_dir, case_id, own_manifest):
        log.warning("case %s failed here but another manifest lists it as finished: its files are kept", case_id)
        return
    for path in (image_path(out_dir, case_id), label_path(out_dir, case_id), out_dir / "previews" / f"{case_id}.png",
                 out_dir / "patches" / f"{case_id}.npz"):
        path.unlink(missing_ok=True)


def build_bank(
    recipe: Recipe | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    preprocess_fn: Callable[..., Any] | None = None,
    synthesize_fn: Callable[..., Any] | None = None,
    allow_pickle: bool = False,
    force_recipe_change: bool = False,
    case_timeout_s: float | None = None,
    llm_timeout_s: float | None = None,
    llm_retries: int | None = None,
    batch_cases: int = 1,
) -> BuildSummary:
    """Synthesize this shard's cases of `recipe` into the nnU-Net raw dataset `out_dir`.

    `shard=(i, n)` (0-based) takes the cases whose stable hash falls in shard i; without it torchrun's
    RANK/WORLD_SIZE decide, else the whole plan. `preprocess_fn`/`synthesize_fn` replace
    `ld_augment.pipeline.preprocess_case`/`synthesize_case` (same signatures), e.g. for tests.
    `allow_pickle` lets checkpoints run pickled code (only ever from a person's command line; recorded).
    Failed cases are recorded, not raised; check `summary.ok`. A systemic failure (see case_runner) stops the
    build early with `summary.stopped` set; the bank stays valid and `--resume` continues it.
    `batch_cases` > 1 makes that many cases at once (one thread each) and pools their lesions in shared
    diffusion-network calls (`LockstepBatcher`; deterministic, same result as one case at a time up to float
    reassociation); it holds that many cases in memory and cannot be combined with `case_timeout_s`.
    """
    t_start = time.perf_counter()
    if int(batch_cases) != batch_cases or batch_cases < 1:
        raise ConfigError(f"batch_cases must be a positive integer, got {batch_cases!r}")
    if batch_cases > 1 and case_timeout_s:
        raise ConfigError("--case-timeout needs --batch-cases 1: the per-case alarm only works in the main thread, "
                          "and pooled cases run in threads")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    out_dir = Path(out_dir).resolve()
    shard = resolve_shard(shard)
    check_out_dir(out_dir)  # before anything is written there, not even a lock file
    all_items = plan_build(recipe)  # enumerates and checks sources before anything is written
    items = select_shard(all_items, shard)
    manifest_path = out_dir / manifest_name(shard)
    shards = shard[1] if shard else None
    job = f"synthesis-bank build{f' --shard {shard[0]}/{shard[1]}' if shard else ''}"
    out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as locks:
        # the folder check runs again under the lock, before the lock's holder record is written
        locks.enter_context(bank_lock(out_dir, job=job, shared=shard is not None, check=lambda: check_out_dir(out_dir)))
        if shard is not None:
            locks.enter_context(shard_lock(out_dir, manifest_path.stem, job=job))
        with metadata_lock(out_dir):
            check_layout(out_dir, marker_or_legacy(out_dir), shards)  # before anything of this build is written
        previous = latest_by_case(read_manifest(manifest_path))
        if previous and not resume:
            raise ConfigError(f"{manifest_path} already lists {len(previous)} case(s); pass --resume to finish that "
                              "build, or choose an empty output folder")
        _check_resume_matches(previous, items, manifest_path)  # a changed seed is never forced through
        with metadata_lock(out_dir):  # every writer of top-level files holds it: their temp files are not in use
            marker = settle_recipe(out_dir, marker_or_legacy(out_dir), recipe.to_dict(), force=force_recipe_change,
                                   allow_pickle=allow_pickle)
            settle_layout(out_dir, marker, shards)
            clean_scratch(out_dir)  # temp files of writers killed mid-write
        if shard is None:
            clean_work(out_dir)  # the exclusive lock: every scratch folder left there is a dead run's
        if preprocess_fn is None or synthesize_fn is None:
            default_pre, default_syn = _default_pipeline()
            preprocess_fn, synthesize_fn = preprocess_fn or default_pre, synthesize_fn or default_syn
        runner = case_runner.CaseRunner(recipe, out_dir, out_dir / WORK_DIR, preprocess_fn, synthesize_fn,
                                        allow_pickle=allow_pickle, case_timeout_s=case_timeout_s,
                                        llm_timeout_s=llm_timeout_s, llm_retries=llm_retries)
        summary = BuildSummary(out_dir, manifest_path, shard, len(all_items), len(items))
        _run(runner, recipe, items, previous, summary, progress, int(batch_cases))
    summary.seconds = time.perf_counter() - t_start
    return summary


def _run(runner: case_runner.CaseRunner, recipe: Recipe, items: list[WorkItem], previous: dict[str, dict[str, Any]],
         summary: BuildSummary, progress: bool, batch_cases: int = 1) -> None:
    out_dir = summary.out_dir
    for sub in ("imagesTr", "labelsTr", "previews"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    base = _dataset_base(recipe)
    write_dataset_json(out_dir, base)  # a valid dataset from the first finished case on (none before it)
    todo = []
    for item in items:
        entry = previous.get(item.case_id)
        if entry is not None and entry.get("status") == "ok" and case_files_verified(out_dir, entry):
            summary.resumed.append(item.case_id)
        else:
            todo.append(item)
    _remove_stale_work(out_dir / WORK_DIR, items)
    kinds: list[str] = []  # error class of each failed case (only consulted while none has succeeded)
    try:
        with ManifestWriter(summary.manifest) as writer:
            for item, entry in _entries(runner, _progress(todo, progress, summary.shard), batch_cases):
                if entry["status"] != "ok":
                    _remove_case_files(out_dir, item.case_id, summary.manifest)  # leftovers of a partial attempt
                writer.append(entry)
                if entry["status"] == "ok":
                    write_dataset_json(out_dir, base)  # the case becomes visible to nnU-Net only now
                    summary.done.append(item.case_id)
                    summary.count_quality(entry.get("quality_gate"))
                    continue
                summary.failed.append((item.case_id, item.source.source_id, entry["error"]))
                log.warning("case %s (source %s) failed: %s", item.case_id, item.source.source_id, entry["error"])
                kinds.append(entry["error"].split(":", 1)[0])
                summary.stopped = _stop_reason(entry, kinds, summary)
                if summary.stopped:
                    log.info("stopping the build: %s", summary.stopped)  # the CLI prints it as its one error line
                    break
    finally:
        _cleanup_work(out_dir / WORK_DIR)
    write_dataset_json(out_dir, base)


def _entries(runner: case_runner.CaseRunner, items: Iterable[WorkItem], batch_cases: int
             ) -> Iterator[tuple[WorkItem, dict[str, Any]]]:
    """(item, manifest entry) in plan order; with batch_cases > 1, groups of cases made together with their
    lesions pooled in shared network calls. A caller that stops at a failed entry leaves the group's later
    cases unrecorded: made, but in neither the manifest nor dataset.json, so `--resume` makes them again."""
    if batch_cases == 1:
        for item in items:
            yield item, runner.run(item)
        return
    from ld_augment.engines.diffusion.batching import LockstepBatcher

    pending = iter(items)
    while group := list(islice(pending, batch_cases)):
        batcher = LockstepBatcher(len(group))
        entries: list[dict[str, Any] | None] = [None] * len(group)
        errors: list[BaseException] = []

        def make(k: int) -> None:
            with batcher.participate(k):
                try:
                    entries[k] = runner.run(group[k])
                except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread below
                    errors.append(exc)

        threads = [threading.Thread(target=make, args=(k,), name=f"case-{it.case_id}") for k, it in enumerate(group)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        log.info("cases %s made together: %d pooled network round(s)", [it.case_id for it in group], batcher.rounds)
        for it, entry in zip(group, entries):
            yield it, entry  # type: ignore[misc]  # every thread filled its entry or raised


def _stop_reason(entry: dict[str, Any], kinds: list[str], summary: BuildSummary) -> str | None:
    """A systemic failure, or the same error class on the first SAME_FAILURE_LIMIT attempted cases."""
    if entry.get("systemic"):
        return (f"case {entry['case_id']} hit a problem every case would hit: {entry['systemic']}; fix it and "
                "rerun with --resume")
    if len(kinds) >= SAME_FAILURE_LIMIT and not summary.done and len(set(kinds)) == 1:
        return (f"the first {len(kinds)} cases all failed with {kinds[0]} (last: {entry['error']}); fix the cause "
                "and rerun with --resume")
    return None


def _check_resume_matches(previous: dict[str, dict[str, Any]], items: list[WorkItem], manifest: Path) -> None:
    """A resumed build must be the same recipe: same case ids must carry the same source and seed."""
    by_id = {item.case_id: item for item in items}
    for case_id, entry in previous.items():
        item = by_id.get(case_id)
        if item is not None and (entry.get("seed") != item.seed or entry.get("source_id") != item.source.source_id):
            raise ConfigError(
                f"{manifest}: case {case_id} was built with seed {entry.get('seed')} from source "
                f"{entry.get('source_id')!r}, but the recipe now plans seed {item.seed} from {item.source.source_id!r}; "
                "the recipe changed since that build: use a new output folder"
            )


def _progress(items: list[WorkItem], enabled: bool, shard: tuple[int, int] | None):
    if not enabled:
        return items
    from tqdm import tqdm

    desc = f"bank {shard[0]}/{shard[1]}" if shard else "bank"
    return tqdm(items, desc=desc, unit="case", dynamic_ncols=True)


def _remove_stale_work(work: Path, items: list[WorkItem]) -> None:
    """Scratch folders a killed run left for THIS build's cases (only those: another shard's stay)."""
    for item in items:
        folder = work / item.case_id
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def _cleanup_work(work: Path) -> None:
    """Remove the (empty) work folder; another shard still working in it keeps it non-empty, so it stays."""
    try:
        work.rmdir()
    except OSError:
        pass
