"""What `nvidia-smi` shows, through NVML (pynvml, from the nvidia-ml-py package).

Every reading degrades to None with a note saying why (no driver, no such process, a PID
namespace that hides this process from NVML), never to an exception.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NvmlReading:
    process_bytes: int | None
    device_bytes: int | None
    note: str | None = None


class Nvml:
    """A handle on the NVML device behind one CUDA device, or the reason there is none."""

    def __init__(self, cuda_index: int = 0) -> None:
        self.handle: Any = None
        self.unavailable: str | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._pynvml = pynvml
            self.handle = self._handle_for(cuda_index)
        except Exception as exc:  # NVMLError subclasses, ImportError, a missing driver
            self.unavailable = f"NVML unavailable ({type(exc).__name__}: {exc})"

    def _handle_for(self, cuda_index: int) -> Any:
        """Match by UUID, which survives CUDA_VISIBLE_DEVICES reordering; else by index."""
        import torch

        uuid = getattr(torch.cuda.get_device_properties(cuda_index), "uuid", None)
        if uuid is not None:
            return self._pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        return self._pynvml.nvmlDeviceGetHandleByIndex(cuda_index)

    def read(self, pid: int | None = None) -> NvmlReading:
        """This process's memory on the device, and the device's used memory, in bytes."""
        if self.handle is None:
            return NvmlReading(None, None, self.unavailable)
        pid = os.getpid() if pid is None else pid
        device = int(self._pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        for proc in self._pynvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
            if proc.pid == pid:
                if proc.usedGpuMemory is None:
                    return NvmlReading(None, device, "NVML withholds per-process memory here")
                return NvmlReading(int(proc.usedGpuMemory), device)
        return NvmlReading(None, device, f"NVML does not list process {pid} (PID namespace?)")
