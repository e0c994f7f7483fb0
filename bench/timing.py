"""What the PyTorch sides of the training benchmarks (bench/adaptor, bench/heads) share: the
timed step loop after a warm-up, as the Rust examples' `examples/common` times theirs."""

import time


def time_steps(warmup, steps, step):
    """Runs `step(i)` for i in 0..warmup + steps; returns (wall seconds of each step after the
    warm-up, CPU seconds per measured step)."""
    times, cpu_start = [], 0.0
    for i in range(warmup + steps):
        if i == warmup:
            cpu_start = time.process_time()
        start = time.perf_counter()
        step(i)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times, (time.process_time() - cpu_start) / steps
