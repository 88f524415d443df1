"""The static engine: a training step and an inference pass traced on the meta device (or on
fake tensors), with no GPU, into per-layer FLOPs, saved bytes and memory peaks.

Where each part lives:
- `analysis`: the entry point; builds a model on meta and runs the traces below into results.
- `training`: the step and the pass themselves, one definition that the real runs
  (nin_profile/measure) execute too; the synthetic batch.
- `tracing`: the dispatch mode that records every op: its FLOPs, its allocations and frees,
  the layer it belongs to.
- `layer_stack`: which layer is running (forward hooks), and the layers' names.
- `flops`: FLOP formulas per aten op, PyTorch's own and ours where its are wrong.
- `memory`: allocations and frees, and the peak they reach; `allocator`: what CUDA's caching
  allocator reserves for them (a simulation of its rules).
- `devices`: the rules by which the target device differs from meta, written down in one
  place with the PyTorch source of each: which kernel it runs (attention, LSTM, GRU, the
  encoder's fast and nested paths, pooling, GroupNorm), its allocator's rounding and library
  workspaces; it names the module that applies each rule it does not apply itself.
- `kernels`: what the kernels `devices` selects keep, traced on meta tensors, and
  `DeviceKernels`, which puts them in place while a step is traced; `fastpath`: the CPU's
  inference fast paths of the transformer layers, op for op.
- `precision` and `autocast`: the precisions a step runs in, and autocast as the target
  device runs it during a trace.
- `parallel`: DDP and FSDP2 per rank, PyTorch's own wrappers traced on a fake process group.
- `_lazy_imports`: stand-ins for torch._dynamo, symbolic shapes and sympy while a trace runs
  (speed only, never different numbers).

Nothing here prints or writes files; results are the dataclasses of nin_profile/results.py.
"""
