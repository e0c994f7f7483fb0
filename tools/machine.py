"""The machine a fixture script ran on, recorded in the fixture's JSON so that a parity test that
fails elsewhere can name both CPUs (stages/train/tests/common/parity.rs prints it)."""
import platform

import torch


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        # The kernel family ATen dispatches to (DEFAULT, AVX2, AVX512): what decides the last bits.
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
