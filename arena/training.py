"""The training loop every training-time defense shares: seeded, batched, on the model's device."""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from arena.data import Split
from arena.model import model_device

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def make_optimizer(name: Literal["adam", "sgd", "rmsprop"], params, lr: float,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimisers the papers use (Adam for seeds 000/002, RMSProp for seed 002's CIFAR)."""
    table = {
        "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
        "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay),
    }
    return table[name]()


def fit(model: nn.Module, data: Split, loss_fn: LossFn, *, epochs: int, batch_size: int,
        lr: float, optimizer: str = "adam", weight_decay: float = 0.0, seed: int = 42,
        progress: bool = False, desc: str = "training") -> nn.Module:
    """Train ``model`` in place on ``data`` with ``loss_fn(model, x, y)``; returns it in eval mode.

    Batches are drawn by a generator seeded with ``seed``, so the same call gives the same
    model. Data moves to the model's device batch by batch.
    """
    device = model_device(model)
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed)
    n = len(data)
    model.train()
    steps = epochs * ((n + batch_size - 1) // batch_size)
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            xb, yb = data.x[idx].to(device), data.y[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, xb, yb)
            loss.backward()
            opt.step()
            bar.update()
    bar.close()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module | Callable, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in batches, on the model's device, returned on ``x``'s device."""
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    device = params[0].device if params else x.device
    outs = [model(x[i:i + batch_size].to(device)).to(x.device) for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def judged(model: nn.Module | Callable, x: torch.Tensor, passes: int, *labels: torch.Tensor,
           batch_size: int = 512) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each of ``labels``: whether ``model`` gives it to each input on the majority of
    ``passes`` passes, and the fraction of passes that do, all from the same passes. A model
    that does not declare itself randomised (``randomized``) is judged on one pass."""
    n = passes if getattr(model, "randomized", False) else 1
    hits = [torch.zeros(len(x), dtype=torch.long, device=t.device) for t in labels]
    if len(x) == 0:  # nothing to judge (an entrant that classifies no evaluated sample correctly)
        return [(h > 0, h.float()) for h in hits]
    with torch.no_grad():
        for _ in range(n):
            pred = predict(model, x, batch_size).argmax(1)
            for h, t in zip(hits, labels):
                h += (pred.to(t.device) == t).long()
    return [(h * 2 > n, h.float() / n) for h in hits]


def accuracy(model: nn.Module | Callable, data: Split, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``data``."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    pred = predict(model, data.x, batch_size).argmax(dim=1)
    if hasattr(model, "train"):
        model.train(was_training)
    return float((pred == data.y).float().mean())
