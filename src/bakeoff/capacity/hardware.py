"""GPUs: memory and dense bf16 peak of each product a spec can name, matched by its node label or device name.

Pure data and stdlib: the capacity planner, the MFU figures (``bakeoff.train.flops``) and the benchmarks
read the same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Dense BF16 tensor-core peaks in TFLOP/s, without structured sparsity (NVIDIA's datasheets print the sparse
# figure, twice these, with a footnote). Sources, NVIDIA product datasheets:
#   H100 (SXM 989, PCIe 756, NVL 835): "NVIDIA H100 Tensor Core GPU Datasheet" (BF16 1,979 / 1,513 / 1,671*)
#   H200 (SXM 989, NVL 835): "NVIDIA H200 Tensor Core GPU Datasheet" (BF16 1,979 / 1,671*)
#   GH200 989: "NVIDIA GH200 Grace Hopper Superchip Datasheet" (its GPU is an H100 SXM-class die)
#   H800 (SXM 989, PCIe 756): the H100 figures (the export variant differs in NVLink bandwidth, not in math)
#   A100 312 (SXM and PCIe alike): "NVIDIA A100 Tensor Core GPU Datasheet" (BF16 312 / 624*)
#   A30 165: "NVIDIA A30 Tensor Core GPU Datasheet" (BF16 165 / 330*)
#   L40S 362: "NVIDIA L40S Datasheet" (BF16 362.05 / 733*)
#   L40 181: "NVIDIA L40 Datasheet" (BF16 181.05 / 362.1*)
#   L4 121: "NVIDIA L4 Tensor Core GPU Datasheet" (BF16 121 / 242*)
#   A40 150: "NVIDIA A40 Datasheet" (BF16 149.7 / 299.4*)
#   A10 125: "NVIDIA A10 Tensor Core GPU Datasheet" (BF16 125 / 250*)
#   B200 2250: "NVIDIA HGX B200" datasheet, per GPU (FP16/BF16 4.5 PFLOPS*)
# (* with sparsity.) torch.cuda.get_device_name reports the H100 SXM part as "NVIDIA H100 80GB HBM3" and the
# H200 SXM part as "NVIDIA H200": a name that says neither SXM nor PCIe/NVL is taken as the SXM part.
GPU_PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # "NVIDIA H100 80GB HBM3" is the SXM part's name
    "H200 SXM": 989.0,
    "H200 NVL": 835.0,
    "H200": 989.0,  # "NVIDIA H200" is the SXM part's name
    "GH200": 989.0,
    "H800 PCIe": 756.0,
    "H800": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A30": 165.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A40": 150.0,
    "A10": 125.0,
    # AMD, dense BF16 per GPU as Kubernetes counts them (amd.com/gpu: an MI250/MI250X is two GCDs, each a GPU):
    #   MI300X 1307.4: "AMD Instinct MI300X Accelerator" datasheet; MI250X 383 and MI250 362.1 per module
    #   ("AMD Instinct MI250X / MI250 Accelerator" datasheets), halved per GCD.
    "MI300X": 1307.0,
    "MI250X": 191.5,
    "MI250": 181.0,
}


def _normal(text: str) -> str:
    return " ".join(text.replace("-", " ").replace("_", " ").casefold().split())


def peak_tflops(device_name: str | None, table: Mapping[str, float] = GPU_PEAK_BF16_TFLOPS) -> float | None:
    """The dense bf16 peak (TFLOP/s) of a GPU by its name (``torch.cuda.get_device_name``); None if unknown.

    Keys are matched case-insensitively as fragments of the name, the longest key first, so "NVIDIA L40S"
    is an L40S (not an L40 or an L4), "NVIDIA A100-SXM4-80GB" an A100 (not an A10), "NVIDIA H100 PCIe" the
    PCIe part and "NVIDIA GH200 480GB" a GH200 (not an H200). Hyphens count as spaces.
    """
    if not device_name:
        return None
    name = _normal(device_name)
    for key in sorted(table, key=lambda k: (-len(_normal(k)), k)):
        if _normal(key) in name:
            return float(table[key])
    return None




# Memory per GPU in GB (1e9 bytes, the unit of the measured peaks), from the total nvidia-smi / rocm-smi report
# (MiB) for each product; keys are the words a node label or device name must contain, the entry with the
# most words that all match wins ("NVIDIA-A100-SXM4-80GB" is an A100 80GB, "NVIDIA-A100-PCIE-40GB" an A100).
GPU_MEMORY_MIB: dict[str, int] = {
    "A100 80GB": 81920,
    "A100": 40960,  # the 40 GB parts (SXM4 and PCIe)
    "H100 NVL": 95830,
    "H100": 81559,  # SXM (NVIDIA-H100-80GB-HBM3) and PCIe
    "H200 NVL": 143771,
    "H200": 143771,
    "GH200": 97871,
    "B200": 183359,
    "A40": 46068,
    "L40S": 46068,
    "L40": 46068,
    "L4": 23034,
    "A10": 23028,
    "A30": 24576,
    "MI300X": 196592,
    "MI250X": 65536,  # per GCD
    "MI250": 65536,  # per GCD
}


@dataclass(frozen=True)
class Gpu:
    """One GPU product: its memory (GB, 1e9 bytes) and dense bf16 peak (TFLOP/s), None where unknown."""

    product: str
    memory_gb: float | None
    peak_tflops: float | None


def gpu_memory_gb(product: str | None, table: Mapping[str, int] = GPU_MEMORY_MIB) -> float | None:
    """The memory of a GPU product (node label or device name) in GB; None if unknown."""
    if not product:
        return None
    words = set(_normal(product).split())
    best = None
    for key in table:
        need = set(_normal(key).split())
        if need <= words and (best is None or len(need) > len(set(_normal(best).split()))):
            best = key
    return round(table[best] * 2**20 / 1e9, 1) if best else None


def gpu(product: str | None) -> Gpu:
    return Gpu(product or "", gpu_memory_gb(product), peak_tflops(product))
