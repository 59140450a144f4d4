"""NVIDIA GPUs through NVML (`pynvml` from the nvidia-ml-py package).

nvmlDeviceGetTotalEnergyConsumption is a millijoule counter since driver load (Volta and
newer); nvmlDeviceGetPowerUsage is milliwatts. A GPU without the energy counter keeps its
power (integrated by trapezoid) instead of silently reporting 0 J.
"""
from __future__ import annotations

from typing import List, Optional

from monitoring.sources.base import EnergySource, Reading, SourceUnavailable, finite_or_none


class NvmlSource(EnergySource):
    name = "nvml"
    trust = 3
    covers = frozenset({"gpu"})

    def __init__(self):
        self._nvml = None
        self._handles: list = []
        self.model = ""

    @property
    def backend(self) -> str:
        if self._nvml is None:
            return "none"
        try:
            return f"nvml driver {_text(self._nvml.nvmlSystemGetDriverVersion())}"
        except Exception:  # noqa: BLE001 - the version is cosmetic
            return "nvml"

    def open(self) -> None:
        try:
            import pynvml  # noqa: PLC0415 - optional, useless without the driver
        except ImportError as exc:
            raise SourceUnavailable(f"ImportError: {exc}") from None
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise SourceUnavailable(f"{type(exc).__name__}: {exc}") from None
        self._nvml = pynvml
        try:
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # noqa: BLE001
            self.close()
            raise SourceUnavailable(f"{type(exc).__name__}: {exc}") from None
        if not self._handles:
            self.close()
            raise SourceUnavailable("NVML initialised but found no GPU")
        try:
            self.model = _text(pynvml.nvmlDeviceGetName(self._handles[0]))
        except Exception:  # noqa: BLE001
            self.model = ""

    def devices(self) -> List[str]:
        return [f"nvgpu{i}" for i in range(len(self._handles))]

    def read(self) -> List[Reading]:
        readings = []
        for index, handle in enumerate(self._handles):
            readings.append(
                Reading(
                    f"nvgpu{index}",
                    self._scaled(self._nvml.nvmlDeviceGetPowerUsage, handle, 1e-3),
                    self._scaled(self._nvml.nvmlDeviceGetTotalEnergyConsumption, handle, 1e-3),
                )
            )
        return readings

    @staticmethod
    def _scaled(query, handle, scale: float) -> Optional[float]:
        try:
            value = finite_or_none(query(handle))
        except Exception:  # noqa: BLE001 - NVMLError_NotSupported on old GPUs, transient errors
            return None
        return None if value is None else value * scale

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self._nvml = None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
