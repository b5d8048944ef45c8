"""The defense learning network (DLN, seed 004 §2): a sanitiser trained in front of a frozen
classifier, repeated over rounds of attack and retraining, and its combination with NAC."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from arena import hookimpl
from arena.attack import Attack
from arena.data import DataSplits, Split
from arena.defense import DefendedModel, InferenceDefense
from arena.model import frozen, model_device
from arena.plugin import PluginConfig
from arena.refs import AttackRef
from arena.training import fit
from arena_builtins.defenses.noise import SIGMA, noisy_logits

ATTACK_BATCH = 512


class Sanitizer(nn.Module):
    """A small convolutional encoder-decoder D that keeps the input's shape.

    Encoder: conv 3×3 (``width``) - ReLU - conv 3×3 stride 2 (2·``width``) - ReLU; decoder:
    nearest upsampling back to H×W - conv 3×3 (``width``) - ReLU - conv 3×3 (C channels). The
    decoder's output is a correction added to the input, clipped to [0, 1]; its last layer
    starts at zero, so an untrained D is the identity and D→C starts as C.
    """

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, channels, 3, padding=1),
        )
        nn.init.zeros_(self.decoder[-1].weight)
        nn.init.zeros_(self.decoder[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(self.encoder(x), size=x.shape[-2:], mode="nearest")
        return (x + self.decoder(h)).clamp(0.0, 1.0)


class SanitizedModel(DefendedModel):
    """C(D(x)): the classifier ``base`` behind the sanitiser ``sanitizer``.

    ``history`` has one row per DLN round: ``round``, ``examples`` (size of the growing DLN
    training set), ``attacked_accuracy`` (accuracy of that round's C_i on its own adversarial
    training examples) and ``sanitized_accuracy`` (accuracy of D_i→C on them after training).
    """

    def __init__(self, base: nn.Module, sanitizer: nn.Module) -> None:
        super().__init__(base)
        self.sanitizer = sanitizer
        self.history: list[dict[str, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.sanitizer(x))


class NoisySanitizedModel(SanitizedModel):
    """C(D(x)) + N(0, σ²): DLN followed by NAC's logit noise (fresh on every call)."""

    randomized: ClassVar[bool] = True

    def __init__(self, base: nn.Module, sanitizer: nn.Module, sigma: float) -> None:
        super().__init__(base, sanitizer)
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return noisy_logits(super().forward(x), self.sigma)


def attack_split(attack: Attack, model: nn.Module, data: Split, eps: float, seed: int) -> tuple[torch.Tensor, float]:
    """Adversarial examples of every sample of ``data`` against ``model`` (batch b seeded
    ``seed + b``), on the CPU, and the model's accuracy on them."""
    device = model_device(model)
    advs, correct = [], 0
    for b, start in enumerate(range(0, len(data), ATTACK_BATCH)):
        x, y = data.x[start:start + ATTACK_BATCH].to(device), data.y[start:start + ATTACK_BATCH].to(device)
        result = attack(model, x, y, eps, seed=seed + b)
        advs.append(result.x_adv.cpu())
        correct += int((~result.success).sum())
    return torch.cat(advs), correct / max(len(data), 1)


class DLNConfig(PluginConfig):
    attack: AttackRef = Field("fgsm", validate_default=True, description="the attack plugin that generates the "
                              "DLN's training data: an id, or {id, params} (FGSM's default norm is L∞)")
    eps: float = Field(0.3, gt=0, description="its budget (FGSM's default ε = 0.3 in L∞)")
    rounds: int = Field(1, ge=1, description="repeated DLN: attack D_{i-1}→C and retrain, this many times")
    epochs: int = Field(5, ge=1, description="epochs over the (growing) DLN training set per round")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0, description="Adam learning rate of the sanitiser")
    width: int = Field(16, ge=1, description="channels of the sanitiser's first layer")
    samples: int | None = Field(None, ge=1, description="train on a seeded subset of this many samples (None: all)")


class DLN(InferenceDefense):
    """Defense learning network (Nguyen, Wang and Sinha, "A Learning and Masking Approach to
    Secure Learning", GameSec 2018, seed 004 §2 "DLN" and "Repeated DLN", Tables 2-3): a
    sanitiser network D is prepended to the frozen classifier C and trained with
    sim(x, D(x')) + H(Cat(y), C_p(D(x'))), sim the per-sample L2 distance, over x' = x and
    x' = A(x) for every training sample (the DLN set is twice the training set). With
    ``rounds = n``, round i attacks C_i = D_{i-1}→C (C_0 = C), adds A(C_i, T) and a fresh copy
    of T to the growing set T_i and retrains D from D_{i-1}. A is any attack plugin; the paper
    runs FGSM "with default parameters" (cleverhans: ε = 0.3 in L∞), five rounds on MNIST."""

    id: ClassVar[str] = "dln"
    Config = DLNConfig
    learned: ClassVar[bool] = True

    def wrap(self, model: nn.Module, data: DataSplits, *, seed: int = 42, train: bool = True) -> DefendedModel:
        cfg = self.config
        torch.manual_seed(seed)
        sanitizer = Sanitizer(data.input_shape[0], cfg.width).to(model_device(model))
        defended = SanitizedModel(model, sanitizer)
        if not train:  # the structure only: a tournament restores the trained state from its cache
            return self._deploy(defended).eval()
        split = data.train.take(cfg.samples, seed)
        attack = cfg.attack.build()
        pool: list[torch.Tensor] = []
        with frozen(model):
            for r in range(cfg.rounds):
                target = model if r == 0 else defended
                adv, attacked = attack_split(attack, target, split, cfg.eps, seed + 1000 * r)
                pool += [split.x, adv]
                self._train_sanitizer(defended, split, torch.cat(pool), seed + r)
                sanitized = _accuracy(defended, adv, split.y)
                defended.history.append({"round": r, "examples": sum(len(p) for p in pool),
                                         "attacked_accuracy": attacked, "sanitized_accuracy": sanitized})
        return self._deploy(defended).eval()

    def _deploy(self, defended: SanitizedModel) -> DefendedModel:
        """The model to hand out once D is trained (DLN-NAC adds logit noise here)."""
        return defended

    def _train_sanitizer(self, defended: SanitizedModel, train: Split, inputs: torch.Tensor, seed: int) -> None:
        """Fit D on (x', x, y) triples; x' = ``inputs[i]`` pairs with sample ``i mod n`` of ``train``.

        The shared training loop batches a Split; its labels here are the rows' indices, from
        which the loss looks up the clean image and the label.
        """
        cfg, n = self.config, len(train)
        classifier = defended.base

        def loss(sanitizer: nn.Module, x_prime: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            src = (rows % n).cpu()
            x, y = train.x[src].to(x_prime.device), train.y[src].to(x_prime.device)
            cleaned = sanitizer(x_prime)
            sim = (cleaned - x).flatten(1).norm(dim=1).mean()
            return sim + F.cross_entropy(classifier(cleaned), y)

        fit(defended.sanitizer, Split(inputs, torch.arange(len(inputs))), loss, epochs=cfg.epochs,
            batch_size=cfg.batch_size, lr=cfg.lr, optimizer="adam", seed=seed, desc=self.id)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``x`` (any device), in batches."""
    device = model_device(model)
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + ATTACK_BATCH].to(device)).argmax(1).cpu()
                          for i in range(0, len(x), ATTACK_BATCH)])
    return float((pred == y).float().mean())


class DLNNACConfig(DLNConfig):
    sigma: float = SIGMA


class DLNNAC(DLN):
    """DLN followed by NAC (Nguyen, Wang and Sinha, "A Learning and Masking Approach to Secure
    Learning", GameSec 2018, seed 004 §2 and Table 6): the (repeated) DLN is trained exactly
    as ``dln``, against the noise-free D_{i-1}→C, and the deployed model adds Gaussian noise
    (σ = 1) to the logits of D→C on every call, which defends against low-perturbation attacks
    while the DLN handles high-perturbation ones."""

    id: ClassVar[str] = "dln-nac"
    Config = DLNNACConfig

    def _deploy(self, defended: SanitizedModel) -> DefendedModel:
        noisy = NoisySanitizedModel(defended.base, defended.sanitizer, self.config.sigma)
        noisy.history = defended.history
        return noisy


@hookimpl
def arena_register_defenses(register):
    register(DLN)
    register(DLNNAC)
