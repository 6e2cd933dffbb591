"""What a model really costs to store and to run.

Stored tensors are every parameter plus every buffer whose name ends in ``_codes`` (how a
quantized module keeps its integer codes), plus the packed weights and biases of PyTorch's
quantized modules (``torch.ao.nn.quantized``: their int8 weights are neither parameters nor
buffers; they count as ``<module>.weight`` in int8 and ``<module>.bias`` in float). Scales,
zero points and exponent offsets (a few numbers per tensor or channel) are not counted, as
in the papers; the serialized size includes them. A tensor is stored dense, zeros included, unless
its name is in ``sparse_storage``: then only its nonzeros count. This is the FairLRF
convention: zeroed factor entries are removed, unstructured zeros elsewhere save nothing,
and a sparse entry carries no index overhead.

Beside that convention, :func:`sparse_format` says what zeros really save: the fraction of
stored entries that are zero, and the bytes of the model written with every tensor in the
smaller of dense and CSR form (values plus int32 column indices and row pointers).
"""
from __future__ import annotations

import io
import statistics
import time
from typing import Any, Iterable, Iterator

import torch
from torch import nn

CODES_SUFFIX = "_codes"


def stored_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    for name, buffer in model.named_buffers():
        if name.endswith(CODES_SUFFIX):
            yield name, buffer
    yield from packed_quantized_tensors(model)


def packed_quantized_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The integer weights (as their int8 representation) and float biases of ao-quantized modules."""
    from torch.ao.nn.quantized.modules.utils import WeightedQuantizedModule

    for name, module in model.named_modules():
        if not isinstance(module, WeightedQuantizedModule):
            continue
        weight = module.weight()
        yield f"{name}.weight", weight.int_repr() if weight.is_quantized else weight
        bias = module.bias()
        if bias is not None:
            yield f"{name}.bias", bias


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def footprint(model: nn.Module, sparse_storage: Iterable[str] = ()) -> dict[str, Any]:
    """Counts and bytes of what is stored; see the module docstring for the rules."""
    sparse = set(sparse_storage)
    tensors = dict(stored_tensors(model))
    unknown = sorted(sparse - set(tensors))
    if unknown:
        raise ValueError(f"sparse_storage names tensors the model does not have: {', '.join(unknown)}")
    params = nonzeros = stored = 0
    bytes_by_dtype: dict[str, int] = {}
    for name, tensor in tensors.items():
        count = int(torch.count_nonzero(tensor.detach()))
        kept = count if name in sparse else tensor.numel()
        params += tensor.numel()
        nonzeros += count
        stored += kept
        key = dtype_name(tensor.dtype)
        bytes_by_dtype[key] = bytes_by_dtype.get(key, 0) + kept * tensor.element_size()
    return {
        "params": params,
        "nonzeros": nonzeros,
        "stored_params": stored,
        "bytes_by_dtype": bytes_by_dtype,
        "stored_bytes": sum(bytes_by_dtype.values()),
        "int8_params": sum(t.numel() for t in tensors.values() if t.dtype == torch.int8),
        **sparse_format(model),
    }


INDEX_BYTES = 4  # int32 column indices and row pointers


def csr_bytes(tensor: torch.Tensor) -> int:
    """Bytes of ``tensor`` in CSR form: rows are the first axis (a vector is one row), columns the rest."""
    rows = tensor.shape[0] if tensor.dim() > 1 else 1
    nonzeros = int(torch.count_nonzero(tensor.detach()))
    return nonzeros * (tensor.element_size() + INDEX_BYTES) + (rows + 1) * INDEX_BYTES


def sparse_format(model: nn.Module) -> dict[str, Any]:
    """The real sparsity of the stored tensors and the bytes of the model in a sparse format.

    ``sparsity``: zero entries / all entries. ``csr_bytes``: each tensor written dense or as
    CSR (:func:`csr_bytes`), whichever is smaller.
    """
    entries = zeros = written = 0
    for _, tensor in stored_tensors(model):
        entries += tensor.numel()
        zeros += tensor.numel() - int(torch.count_nonzero(tensor.detach()))
        written += min(tensor.numel() * tensor.element_size(), csr_bytes(tensor))
    return {"sparsity": zeros / entries if entries else 0.0, "csr_bytes": written}


def compression_ratio(dense_fp: dict[str, Any], compressed_fp: dict[str, Any]) -> float:
    """Stored size of the dense model over that of the compressed one (papers' CR)."""
    return dense_fp["stored_bytes"] / compressed_fp["stored_bytes"]


def serialized_size(model: nn.Module) -> int:
    """Bytes of the model's state dict as ``torch.save`` writes it (dense, zeros included)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _synchronize(device: torch.device) -> None:
    # CUDA kernels run asynchronously; without waiting, a timer measures only the launch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: nn.Module, example_input: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds per forward pass on ``example_input``, in eval mode without autograd."""
    was_training = model.training
    model.eval()
    device = example_input.device
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(example_input)
            for _ in range(max(1, repeats)):
                _synchronize(device)
                start = time.perf_counter()
                model(example_input)
                _synchronize(device)
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times)
