"""A short end-to-end look at the pipeline: neural graph of the CIFAR-10 task model, then a brief Adam run on
real data. (The full main job, meta-training + evaluation, replaces this once the learned optimizer exists.)"""
from __future__ import annotations

import time

import torch
from tqdm import tqdm

from l2o.graph import EDGE_KINDS, NeuralGraph
from tasks import get_task


def run_demo(task_name: str = "cifar10-conv", steps: int = 200, lr: float = 1e-3, seed: int = 0,
             data_root: str | None = None, device: str | torch.device = "cpu") -> dict:
    task = get_task(task_name)
    model = task.make_model(seed)
    t0 = time.perf_counter()
    graph = NeuralGraph.from_module(model)
    model = model.to(device)  # after the graph: its construction time is measured on the CPU, as reported
    build_ms = (time.perf_counter() - t0) * 1e3
    print(f"{task.name}: {task.description}")
    print(f"  {graph}  (built in {build_ms:.1f} ms)")
    for info in graph.layers[0]:
        print(f"    layer {info.index}: {info.kind:<8} {info.name:<10} {info.num_nodes:>5} nodes, act={info.activation}")
    kinds = {EDGE_KINDS[k]: int((graph.edge_kind == k).sum()) for k in range(len(EDGE_KINDS))}
    print(f"  edges by kind: {kinds}")

    stream = task.batches("train", seed=seed, device=device, root=data_root)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    bar = tqdm(range(steps), desc=f"Adam lr={lr:g} on {task.name}", unit="step")
    for step in bar:
        x, y = stream.batch(step)
        loss = task.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    result = task.evaluate(model, "test", root=data_root)  # on the model's device
    print(f"  after {steps} Adam steps: train loss {sum(losses[-20:]) / 20:.3f}, "
          f"test accuracy {100 * result['acc']:.2f}% (full test set)")
    return {"task": task.name, "steps": steps, "test_acc": result["acc"], "final_loss": losses[-1]}
