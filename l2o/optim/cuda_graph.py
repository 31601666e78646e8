"""The optimizer step as one CUDA graph: capture the learned update once, replay it every step.

On a GPU the learned step is launch-bound: a ResNet-18 step of the default launches thousands of small kernels
(per layer of the encoder, per row chunk of the head) and the GPU waits on Python between them. The update is a pure
function of tensors whose shapes never change for a given model, so it can be recorded once with
``torch.cuda.graph`` and replayed with a single launch. Inputs go in through static buffers (copied in before each
replay), outputs come out in static buffers (valid until the next replay).
"""
from __future__ import annotations

from typing import Callable

import torch

UpdateFn = Callable[[torch.Tensor, torch.Tensor, dict, torch.Tensor], tuple[torch.Tensor, dict]]


class CapturedUpdate:
    """``update(params [P], grads [P], state, lr) -> (new_params [P], new_state)`` recorded as a CUDA graph.

    Args:
        update: the pure update to record (no host synchronisation inside, no randomness).
        params, grads, state, lr: example inputs; their shapes, dtypes and state keys are what the graph accepts.
            ``lr`` is a tensor (``[]`` or ``[P]``): a float would be baked into the graph.
    Replaying copies the inputs into the graph's own buffers first; the returned tensors are the graph's output
    buffers, overwritten by the next replay. :meth:`restore_state` puts the inputs' state back into them (a step that
    is rejected after the replay must leave the state it started from).
    """

    def __init__(self, update: UpdateFn, params: torch.Tensor, grads: torch.Tensor, state: dict[str, torch.Tensor],
                 lr: torch.Tensor):
        if params.device.type != "cuda":
            raise ValueError(f"CUDA graphs need CUDA tensors, got params on {params.device}")
        self.params, self.grads, self.lr = params.clone(), grads.clone(), lr.clone()
        self.state = {k: v.clone() for k, v in state.items()}
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(params.device):  # capture and replay on the parameters' GPU, whichever is current
            # Warm-up on a side stream first, as torch.cuda.graph requires (lazy initialisations such as cuBLAS
            # workspaces must not happen during capture).
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                update(self.params, self.grads, self.state, self.lr)
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(self.graph):
                self.out_params, self.out_state = update(self.params, self.grads, self.state, self.lr)

    def accepts(self, params: torch.Tensor, state: dict[str, torch.Tensor], lr: torch.Tensor) -> bool:
        """Whether these inputs fit the recorded buffers (same shapes, dtypes, devices and state keys)."""
        def same(a: torch.Tensor, b: torch.Tensor) -> bool:
            return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device

        return (same(params, self.params) and same(lr, self.lr) and state.keys() == self.state.keys()
                and all(same(v, self.state[k]) for k, v in state.items()))

    def __call__(self, params: torch.Tensor, grads: torch.Tensor, state: dict[str, torch.Tensor], lr: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.params.copy_(params)
        self.grads.copy_(grads)
        self.lr.copy_(lr)
        for k, v in state.items():
            self.state[k].copy_(v)
        with torch.cuda.device(self.params.device):
            self.graph.replay()
        return self.out_params, self.out_state

    def restore_state(self) -> None:
        """Undo the last replay's state: its output buffers get the state it started from."""
        for k, v in self.state.items():
            self.out_state[k].copy_(v)
