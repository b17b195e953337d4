"""The training update captured in CUDA graphs: one graph per batch shape, replayed.

A training update on a GPU is a few hundred to a few thousand small kernels (the step-by-step
decoders of VAR and soft attention more); launching them one by one from Python keeps the GPU
waiting for the host. `GraphedUpdates` records the whole update (forward, backward, gradient
clipping, the fused optimiser step) once per batch shape (captions, images, padded caption length)
in a `torch.cuda.CUDAGraph` and replays it: one launch per update.

How a replay stays the update it replaces:
- the batch is copied into the graph's own input tensors before each replay (a few small copies);
- the random draws come from generators registered with every graph (`register_generator_state`):
  the caller seeds them before each update, as for an eager update, so the draws depend on
  (seed, step) alone and a resumed run draws what an uninterrupted one does;
- the learning rate lives in a device tensor (`make_optimizer(..., capturable=True)`) that the
  caller fills before each update, so one graph serves every step of a schedule; so does a decaying
  `model.initial_state_dropout` (the decoder's `initial_state_dropout_rate`);
- where the update's Python control flow changes with the step (the initial-state draw stops once
  a decaying rate reaches 0), the caller names the change in `variant`, and each variant has its
  own graphs;
- values that the graph keeps between updates (optimiser moments, VAR's moving-average baseline)
  are updated in place.
The first update of each shape runs eagerly (it compiles kernels, creates optimiser state, and is
a real update); the second captures and replays. Shapes beyond `max_graphs` run eagerly.

Use it only for an update that reads nothing back to the host and whose Python control flow does
not depend on the step: `graphable` says which configurations qualify.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch

from captioner.data.batching import CaptionText

UpdateFunction = Callable[[torch.Tensor, torch.Tensor, CaptionText], dict[str, torch.Tensor]]


def graphable(config) -> tuple[bool, str]:
    """(True, "") when the training update of ExperimentConfig `config` can be captured, else (False,
    the reason): the update must be the same Python program at every step."""
    e, t = config.estimator, config.train
    if not t.device.startswith("cuda"):
        return False, "CUDA graphs need a CUDA device"
    if e.name == "wsram" and e.sleep_update:
        return False, "the sleep update samples captions until every one has ended (a host-side check)"
    if e.name == "var" and e.expected_glimpse_probability > 0:
        return False, "VAR's expected-glimpse coin decides on the host which update to run"
    if config.model.encoder.fine_tune:
        return False, "fine-tuning reads images of varying sizes through the backbone"
    return True, ""


def _text_tensors(text: CaptionText) -> list[torch.Tensor | None]:
    return [getattr(text, f.name) for f in fields(text)]


def _shape_key(inputs: torch.Tensor, rows: torch.Tensor, text: CaptionText) -> tuple:
    return (tuple(inputs.shape), inputs.dtype, tuple(rows.shape),
            tuple(None if t is None else (tuple(t.shape), t.dtype) for t in _text_tensors(text)))


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor
    rows: torch.Tensor
    text: CaptionText
    names: list[str]
    outputs: torch.Tensor  # the update's statistics, stacked (float32)

    def load(self, inputs: torch.Tensor, rows: torch.Tensor, text: CaptionText) -> None:
        self.inputs.copy_(inputs, non_blocking=True)
        self.rows.copy_(rows, non_blocking=True)
        for static, value in zip(_text_tensors(self.text), _text_tensors(text)):
            if static is not None:
                static.copy_(value, non_blocking=True)


class GraphedUpdates:
    """Replays `update(inputs, rows, text)` from CUDA graphs, one per batch shape (see the module).

    `generators` are the non-default generators the update draws from (the default CUDA generator,
    which dropout uses, is registered by PyTorch itself). Returns the update's statistics as fresh
    tensors on the device, like the eager update."""

    def __init__(self, update: UpdateFunction, generators: Sequence[torch.Generator] = (),
                 warmup: int = 1, max_graphs: int = 32):
        self.update = update
        self.generators = [g for g in generators if g.device.type == "cuda"]
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, _Graph] = {}
        self.eager_updates: dict[tuple, int] = {}
        self.replays = 0
        self.pool = None

    def __call__(self, inputs: torch.Tensor, rows: torch.Tensor, text: CaptionText,
                 variant: tuple = ()) -> dict[str, torch.Tensor]:
        key = (variant, _shape_key(inputs, rows, text))
        graph = self.graphs.get(key)
        if graph is None:
            if self.eager_updates.get(key, 0) < self.warmup or len(self.graphs) >= self.max_graphs:
                self.eager_updates[key] = self.eager_updates.get(key, 0) + 1
                return self._eager(inputs, rows, text)
            graph = self.graphs[key] = self._capture(inputs, rows, text)
        graph.load(inputs, rows, text)
        graph.graph.replay()
        self.replays += 1
        # A copy: the graph's own output tensors are rewritten by its next replay.
        return dict(zip(graph.names, graph.outputs.clone().unbind(0)))

    def _eager(self, inputs, rows, text) -> dict[str, torch.Tensor]:
        # On a side stream, as PyTorch asks of the updates before a capture (lazy initialisation of
        # cuBLAS workspaces and the like happens there, not in the capturing stream).
        side = torch.cuda.Stream(device=inputs.device)
        side.wait_stream(torch.cuda.current_stream(inputs.device))
        with torch.cuda.stream(side):
            stats = self.update(inputs, rows, text)
        torch.cuda.current_stream(inputs.device).wait_stream(side)
        return stats

    def _capture(self, inputs, rows, text) -> _Graph:
        device = inputs.device
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        static_inputs, static_rows = inputs.clone(), rows.clone()
        static_text = CaptionText(*[None if t is None else t.clone() for t in _text_tensors(text)])
        graph = torch.cuda.CUDAGraph()
        for generator in self.generators:
            graph.register_generator_state(generator)
        torch.cuda.synchronize(device)
        with torch.cuda.graph(graph, pool=self.pool):
            stats = self.update(static_inputs, static_rows, static_text)
            names = list(stats)
            outputs = torch.stack([value.detach().float().reshape(()) for value in stats.values()])
        return _Graph(graph, static_inputs, static_rows, static_text, names, outputs)
