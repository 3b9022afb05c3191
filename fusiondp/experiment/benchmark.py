"""Helpers the benchmark scripts share: machine facts, peak memory, interleaved timing.

Benchmarks, not tests: timings mean something only on an otherwise idle machine, so every report
carries the load average it ran under.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Peak memory. The child is wrapped in this `python -c` program, which runs the training script with
# runpy (same argv, `__name__ == "__main__"`) and, when it ends, writes its own peak resident set size
# to a file. It reads VmHWM from /proc/self/status, not ru_maxrss: on Linux ru_maxrss (getrusage
# RUSAGE_SELF, wait4, or RUSAGE_CHILDREN, which is a max over all children anyway) carries over the
# PARENT's peak across fork+exec, so after this process has imported torch and loaded the data every
# child would report at least our own peak. VmHWM is the high-water mark of the process's own address
# space, which exec replaces. Where /proc is missing (not Linux) it falls back to ru_maxrss (bytes on
# macOS, KiB elsewhere) and says so in the file. /usr/bin/time -v would measure the same thing as
# VmHWM but is not installed everywhere; this needs nothing beyond Python.
PEAK_RSS_WRAPPER = r"""
import json, resource, runpy, sys
peak_file, script, *rest = sys.argv[1:]
sys.argv = [script, *rest]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    try:
        with open("/proc/self/status") as fh:
            kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
        peak, source = kib * 1024, "VmHWM"
    except (OSError, StopIteration):
        raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak, source = (raw if sys.platform == "darwin" else raw * 1024), "ru_maxrss"
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    with open(peak_file, "w") as fh:
        json.dump({"peak_rss_bytes": peak, "source": source, "torch_threads": threads}, fh)
"""


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM, MB = 10^6 bytes), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = round(os.getloadavg()[0], 2)
    return info


def time_calls(fns: dict[str, Callable[[], object]], *, calls: int, warmup: int) -> dict[str, float]:
    """Median wall milliseconds per call of each function, after ``warmup`` untimed calls of each.

    The calls are interleaved (one call of every function per round), so a change in background
    load during the measurement affects every function alike instead of whichever ran at the time.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(calls):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}
