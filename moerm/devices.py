"""Where a model runs and in which number format (``--device``, ``--dtype``).

``auto`` picks bfloat16 where the hardware computes it natively (CUDA devices that
support it, and CPUs with AVX512-BF16 or AMX-BF16, where oneDNN's bf16 matrix
products run about twice as fast as float32) and float32 elsewhere. Only the
backbone's and adapters' weights take the chosen dtype, and run under
``torch.autocast`` so that norms, softmax and the residual stream between layers
stay float32; scalar heads, pooling and the aggregator are float32.

torch is imported inside the functions: the router's config validates a dtype name
without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu", "cuda:0", ...
    dtype: str  # "float32", "bfloat16" or "float16"
    reason: str  # why this dtype, for the start-up log

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def autocast(self):
        """The context to run the backbone in: matrix products in the low-precision
        dtype (the weights already are), float32 where torch's autocast keeps it
        (norms, softmax, sums between layers). A no-op for float32."""
        import torch

        return torch.autocast(
            device_type=self.device.partition(":")[0],
            dtype=self.torch_dtype,
            enabled=self.dtype != "float32",
        )

    def __str__(self) -> str:
        return f"{self.device}, {self.dtype} ({self.reason})"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16, as torch's CPU capability probe reports them."""
    import torch

    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def resolve(device: str = "cpu", dtype: str = "auto") -> Placement:
    """The device and dtype to run on. ValueError for an unknown name, a CUDA device
    that is not there, or a dtype the device cannot run."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (one of {', '.join(DTYPES)})")
    if device == "cpu":
        where = "cpu"
    elif device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine")
        index = int(device.partition(":")[2] or torch.cuda.current_device())
        if not 0 <= index < torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
        where = f"cuda:{index}"
    else:
        raise ValueError(f"unknown device {device!r} (cpu, cuda or cuda:N)")
    if dtype != "auto":
        if where.startswith("cuda") and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"{where} does not support bfloat16")
        return Placement(where, dtype, "asked for")
    if where.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return Placement(where, "bfloat16", "auto: the CUDA device supports bf16")
        return Placement(where, "float16", "auto: the CUDA device has no bf16")
    if cpu_has_native_bf16():
        return Placement(where, "bfloat16", "auto: the CPU has native bf16 (AVX512-BF16 or AMX)")
    return Placement(where, "float32", "auto: the CPU has no native bf16")
