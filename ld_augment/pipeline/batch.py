"""Run one job over many cases: a progress bar, one bad case never stops the batch, a final table."""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TypeVar

from tqdm.auto import tqdm

from ld_augment.errors import LdAugmentError, describe_os_error

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class CaseOutcome:
    name: str
    ok: bool
    seconds: float
    error: str = ""
    result: Any = None


@dataclass
class BatchReport:
    outcomes: list[CaseOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def table(self) -> str:
        """A plain-text table of every case: status, time and the error of failed ones."""
        width = max([len(o.name) for o in self.outcomes] + [4])
        lines = [f"{'case':<{width}}  status  seconds  error", "-" * (width + 26)]
        for o in self.outcomes:
            lines.append(f"{o.name:<{width}}  {'ok' if o.ok else 'FAILED':<6}  {o.seconds:7.1f}  {o.error}")
        lines.append(f"{len(self.outcomes) - len(self.failed)} succeeded, {len(self.failed)} failed")
        return "\n".join(lines)


def run_batch(items: Iterable[tuple[str, T]], job: Callable[[T], Any], *, desc: str,
              progress: bool = True) -> BatchReport:
    """Call `job` on every item; errors are recorded per case (with a traceback for unexpected ones)."""
    items = list(items)
    report = BatchReport()
    for name, item in tqdm(items, desc=desc, unit="case", disable=not progress or len(items) < 2):
        t0 = time.perf_counter()
        try:
            result = job(item)
        except (LdAugmentError, OSError) as exc:  # a bad file, a full disk: one line naming the file
            message = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            log.error("%s: %s", name, message)
            report.outcomes.append(CaseOutcome(name, False, time.perf_counter() - t0, message))
        except Exception as exc:  # noqa: BLE001 - a batch must survive any one case; the trace is logged
            log.error("%s: unexpected %s\n%s", name, type(exc).__name__, traceback.format_exc())
            report.outcomes.append(CaseOutcome(name, False, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"))
        else:
            report.outcomes.append(CaseOutcome(name, True, time.perf_counter() - t0, result=result))
    return report

