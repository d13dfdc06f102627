"""Batch sizes that fit: measure the largest one up front, and halve on out-of-memory without losing rows.

`auto_batch_size` runs a real forward at growing batch sizes and watches peak memory (exact on CUDA via
the allocator's peak counter; on CPU the process's peak resident set), so a sweep over a big model starts
at a size that fits instead of failing. `run_halving` is the safety net for whatever the measurement did
not foresee (a longer batch later on): an OOM splits the batch in two and retries, keeping row order.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from traitlab.errors import ConfigError, ModelError

log = logging.getLogger(__name__)
T = TypeVar("T")

_PROC = Path("/proc/self")


def is_oom(err: BaseException) -> bool:
    """CUDA/MPS OOM, Python's MemoryError, or torch's CPU allocator failing ("can't allocate memory")."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _release() -> None:
    """Hand cached-but-free memory back: CUDA's allocator cache, and glibc's heap (else CPU peak
    measurements drift as freed blocks stay resident)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _free() -> None:
    """After an OOM: the exception's traceback may hold tensors in cycles, so collect them first."""
    gc.collect()
    _release()


def run_halving(fn: Callable[[list[int]], Sequence[T]], rows: list[int]) -> list[T]:
    """Call fn(rows); on OOM split rows in two halves and recurse. Results come back in `rows` order.

    fn receives the ORIGINAL row indices of its sub-batch, so per-row state (PerSampleSteering.rows(idx),
    spans, labels) stays aligned however often the batch was split.
    """
    try:
        out = list(fn(rows))
    except Exception as e:  # noqa: BLE001 - only OOM is handled, the rest re-raised
        if not is_oom(e):
            raise
        if len(rows) == 1:
            raise
        _free()
        mid = len(rows) // 2
        log.warning("out of memory on a batch of %d rows: retrying as %d + %d", len(rows), mid, len(rows) - mid)
        return run_halving(fn, rows[:mid]) + run_halving(fn, rows[mid:])
    if len(out) != len(rows):
        raise RuntimeError(f"batch function returned {len(out)} results for {len(rows)} rows")
    return out


# ------------------------------------------------------------------------------------- peak memory


def _status_kb(field: str) -> int | None:
    try:
        for line in (_PROC / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_bytes() -> int | None:
    try:
        pages = int((_PROC / "statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry, while the block runs: CUDA allocator peak, else peak RSS.

    CPU: Linux lets a process reset its RSS high-water mark (VmHWM) by writing 5 to /proc/self/clear_refs;
    where that is not allowed a thread samples RSS every millisecond instead (can miss short spikes).
    `peak` is None where nothing can be measured.
    """

    def __init__(self, device: torch.device, sample: bool = False):
        self.device = device
        self._force_sample = sample
        self.peak: int | None = None
        self._base = 0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled = 0

    def __enter__(self) -> PeakMemory:
        _release()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = _rss_bytes() or 0
        try:
            if self._force_sample:
                raise PermissionError("sampling asked for")
            (_PROC / "clear_refs").write_text("5")
        except OSError:
            self._sampled = self._base
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            rss = _rss_bytes()
            if rss is not None:
                self._sampled = max(self._sampled, rss)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            high = self._sampled
        else:
            high = _status_kb("VmHWM")
        self.peak = None if high is None or not self._base else max(0, high - self._base)


def memory_budget(device: torch.device, fraction: float = 0.9) -> int | None:
    """Bytes a batch may add on `device`: CUDA free + cached-but-unused; CPU MemAvailable. None: unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int((free + cached) * fraction)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(int(line.split()[1]) * 1024 * fraction)
    except (OSError, ValueError, IndexError):
        pass
    return None


# ---------------------------------------------------------------------------------- auto batch size


def auto_batch_size(
    probe: Callable[[int], Any],
    start: int = 1,
    max_size: int = 256,
    *,
    device: torch.device | str | None = None,
    budget: int | None = None,
) -> int:
    """The largest batch size in [1, max_size] for which `probe(batch_size)` (a real forward) fits.

    Doubles from `start`, measuring each probe's peak memory. Two sizes give a line peak(b) = fixed + b *
    per_row; when the next doubling is predicted to pass `budget` (default: `memory_budget(device)`), the
    predicted largest size is tried once instead. A real OOM stops the growth and the range between the
    last good and the failing size is bisected (to within 1/8). If even `start` fails it halves down to 1;
    batch size 1 failing raises ModelError. `device` defaults to CUDA when available.
    """
    if not isinstance(start, int) or not isinstance(max_size, int) or not 1 <= start <= max_size:
        raise ModelError(f"auto_batch_size: need 1 <= start <= max_size, got start={start!r} max_size={max_size!r}")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if budget is None:
        budget = memory_budget(dev)
    peaks: dict[int, int] = {}

    def fits(b: int) -> bool:
        meter = PeakMemory(dev)
        try:
            with meter:
                probe(b)
        except Exception as e:  # noqa: BLE001 - only OOM means "too big"
            if not is_oom(e):
                raise
            _free()
            log.info("auto batch size: %d rows ran out of memory", b)
            return False
        if meter.peak is not None:
            peaks[b] = meter.peak
        if budget is not None and meter.peak is not None and meter.peak > budget:
            log.info("auto batch size: %d rows peaked at %.0f MiB > budget %.0f MiB", b, meter.peak / 2**20,
                     budget / 2**20)
            return False
        return True

    def predicted_max() -> int | None:
        """Largest size the line through the last two measured peaks keeps within budget."""
        if budget is None or len(peaks) < 2:
            return None
        (b1, p1), (b2, p2) = sorted(peaks.items())[-2:]
        per_row = (p2 - p1) / (b2 - b1)
        if per_row <= 0:
            return None
        return int((budget - (p2 - per_row * b2)) // per_row)

    b = start
    while not fits(b):
        if b == 1:
            raise ModelError("auto_batch_size: even a batch of 1 does not fit in memory on " + str(dev))
        b = max(1, b // 2)
    good, bad = b, None
    while good < max_size:
        nxt = min(2 * good, max_size)
        guess = predicted_max()
        if guess is not None and guess < nxt:
            if guess > good:  # try the predicted limit once; if it fails, bisect below it
                if fits(guess):
                    good = guess
                else:
                    bad = guess
            break
        if fits(nxt):
            good = nxt
        else:
            bad = nxt
            break
    while bad is not None and bad - good > max(1, good // 8):
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    log.info("auto batch size: %d (max %d, budget %s MiB)", good, max_size,
             "?" if budget is None else f"{budget / 2**20:.0f}")
    return good


# ------------------------------------------------------------------------------- `batch_size=auto`

AUTO = "auto"


def check_batch_size(value: Any, key: str) -> None:
    """A batch size setting is a positive int or `auto`; anything else fails naming the config key."""
    if isinstance(value, str) and value.lower() == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, f"{value!r}: expected a positive integer or auto (measured once per job)")


def resolve_batch_size(value: Any, lm: Any, texts: Sequence[str], *, key: str, new_tokens: int = 0,
                       max_size: int | None = None) -> int:
    """The batch size to use for a job: `value` itself, or for `auto` the largest size that fits, measured once.

    The probe is a real forward of the model on copies of the longest text (extended by `new_tokens` for
    generation, whose KV cache grows to that length), keeping the logits of one position only, as generation
    and capture do. The size never exceeds `max_size` (default: the number of texts, since a larger batch
    would never be filled) nor 1024.
    """
    check_batch_size(value, key)
    if not (isinstance(value, str) and value.lower() == AUTO):
        return int(value)
    if not texts:
        return 1
    tok = lm.tokenizer
    ids = max((tok(t)["input_ids"] for t in texts), key=len)
    ids = (list(ids) * (1 + new_tokens // max(1, len(ids)) + 1))[:len(ids) + new_tokens]
    row = torch.tensor([ids], dtype=torch.long, device=lm.device)

    @torch.inference_mode()
    def probe(b: int) -> None:
        lm.model(input_ids=row.expand(b, -1), use_cache=new_tokens > 0, logits_to_keep=1)

    size = auto_batch_size(probe, max_size=max(1, min(max_size or len(texts), 1024)), device=lm.device)
    log.info("%s=auto: %d rows per batch (measured on %d-token rows on %s)", key, size, len(ids), lm.device)
    return size
