"""Embedding-geometry training defenses of seed 003: reverse cross-entropy and PDM.

Both act on the pre-logit embedding ``model.features(x)`` that every built-in architecture
exposes (``model(x) == model.classifier(model.features(x))``).

Reverse cross-entropy (Pang et al., "Towards Robust Detection of Adversarial Examples",
NeurIPS 2018), as seed 003 §3.3 states it: the reverse label of class ``c`` is
``R_c[i] = 0 if i == c else 1/(K - 1)`` and the loss is ``-R_c · log softmax(Z(x))``. Minimising
it drives the true class's softmax probability *down*, so Pang et al. predict with the negated
logits, ``softmax(-Z(x))``. Here the model's output *is* the inference logit ``-Z(x)``: the loss
is written on ``-model(x)``. As the last layer is linear, ``-Z`` is again a linear layer
(weights and bias negated; PyTorch's initialisation is symmetric), so this is the same training
dynamics, and the trained model is an ordinary classifier whose argmax is the RCE prediction:
attacks, the tournament and the KDE detector see plain logits and the plain embedding.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from arena import hookimpl
from arena.defense import TrainingConfig, TrainingDefense
from arena.errors import ConfigError


def embedding_and_logits(model: nn.Module, x: torch.Tensor, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The flattened pre-logit embedding ``(N, D)`` and the logits of ``x``, with one pass
    through ``features`` when the model is ``classifier(features(x))``."""
    features = getattr(model, "features", None)
    if not callable(features):
        raise ConfigError(f"defense '{owner}': the model ({type(model).__name__}) has no `features` "
                          "attribute giving its pre-logit embedding; use an architecture built as "
                          "classifier(features(x)), as every built-in one is")
    z = features(x).flatten(1)
    classifier = getattr(model, "classifier", None)
    return z, (classifier(z) if callable(classifier) else model(x))


def reverse_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean ``-R_y · log softmax(-logits)`` (seed 003 §3.3), where ``logits`` are the model's
    inference outputs (the negation of Pang et al.'s training logits ``Z``)."""
    k = logits.shape[1]
    log_p = F.log_softmax(-logits, dim=1)
    reverse = torch.full_like(log_p, 1.0 / (k - 1)).scatter_(1, y.unsqueeze(1), 0.0)
    return -(reverse * log_p).sum(dim=1).mean()


def siamese_partners(y: torch.Tensor, q: float, num_classes: int) -> torch.Tensor:
    """Algorithm 1, lines 5-14, with the Siamese samples drawn from the mini-batch itself.

    For each sample, with probability ``q`` the partner is another batch sample of the same
    class; otherwise a class different from its own is drawn uniformly among the classes present
    in the batch, then a batch sample of that class. Where no such partner exists (a class
    alone in the batch, a single-class batch) the other kind is taken, or the sample itself.
    Returns the partner indices ``(N,)``; randomness comes from torch's global generator.
    """
    n = y.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=y.device)
    same_class = (y.unsqueeze(0) == y.unsqueeze(1)) & ~eye
    present = F.one_hot(y, num_classes).bool().any(0)
    other = present.unsqueeze(0) & (torch.arange(num_classes, device=y.device).unsqueeze(0) != y.unsqueeze(1))
    has_other = other.any(1)
    cls = torch.multinomial(torch.where(has_other.unsqueeze(1), other.float(), 1.0), 1).squeeze(1)
    diff_class = (y.unsqueeze(0) == cls.unsqueeze(1)) & has_other.unsqueeze(1)
    want_same = torch.rand(n, device=y.device) < q
    pick = torch.where(want_same.unsqueeze(1), same_class, diff_class)
    pick = torch.where(pick.any(1, keepdim=True), pick, same_class | diff_class)
    pick = torch.where(pick.any(1, keepdim=True), pick, eye)
    return torch.multinomial(pick.float(), 1).squeeze(1)


def siamese_loss(z: torch.Tensor, y: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Algorithm 1, line 17: mean ``|cos(z1, z2) - s|`` with ``s = 1`` for a same-class pair."""
    s = (y == y[partner]).to(z.dtype)
    return (F.cosine_similarity(z, z[partner], dim=1) - s).abs().mean()


def reduce_variance_loss(z: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. (5): ``σ_c = mean_i ||z_i^c - μ_c||²`` per class of the mini-batch, averaged over
    the classes present in it."""
    onehot = F.one_hot(y, num_classes).to(z.dtype)
    counts = onehot.sum(0)
    mu = onehot.t() @ z / counts.clamp_min(1).unsqueeze(1)
    sq = (z - mu[y]).square().sum(1)
    sigma = onehot.t() @ sq / counts.clamp_min(1)
    return sigma[counts > 0].mean()


def leaky_relus(model: nn.Module, negative_slope: float) -> nn.Module:
    """Replace every ``nn.ReLU`` module of ``model`` by ``nn.LeakyReLU(negative_slope)``, in place."""
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is nn.ReLU:
                setattr(module, name, nn.LeakyReLU(negative_slope))
    return model


class RCEConfig(TrainingConfig):
    negative_slope: float = Field(0.1, ge=0, lt=1, description=(
        "every nn.ReLU of the network becomes LeakyReLU(negative_slope), seed 003 Appendix B's "
        "activation (0.1) for all its models; 0 keeps the ReLUs"))


class ReverseCrossEntropy(TrainingDefense):
    """Reverse cross-entropy training (Pang et al., "Towards Robust Detection of Adversarial
    Examples", NeurIPS 2018), as seed 003 (PDM, ICLR 2020 submission) §3.3 uses it and as its
    RCE baseline (Tables 1-3): the loss is the cross-entropy against the reverse label
    distribution (uniform over the non-true classes), and the prediction uses the negated
    training logits. The trained model outputs those negated logits directly (see the module
    docstring), so its argmax is the prediction.

    ``build`` swaps the network's ReLUs for LeakyReLU(0.1), as for `pdm`: seed 003 compares
    "standard training of ResNet-56 [...] and ResNet-56 equipped with the RCE defense" and
    lists one set of classifier hyper-parameters for them (Appendix B: "Activation
    Leaky-Relu (0.1)"), so the RCE baseline has the same activation as PDM. The training
    schedule is the shared `TrainingConfig` (Appendix B trains ResNet-56 with SGD, lr 0.1,
    L2 0.002, batch 128, 80 epochs on MNIST; set those through the tournament's `[training]`
    table)."""

    id: ClassVar[str] = "rce"
    Config = RCEConfig

    def build(self, architecture, input_shape, num_classes):
        model = architecture.build(input_shape, num_classes)
        if self.config.negative_slope > 0:
            leaky_relus(model, self.config.negative_slope)
        return model

    def loss(self, model, x, y):
        return reverse_cross_entropy(model(x), y)


class PDMConfig(RCEConfig):
    same_class_prob: float = Field(0.5, ge=0, le=1, description=(
        "Q, the probability that a sample's Siamese partner is of its own class (Algorithm 1, "
        "line 6); seed 003 gives no value, 0.5 balances similar and dissimilar pairs"))
    siamese_weight: float = Field(1.0, ge=0, description="weight of the Siamese loss (1 in Algorithm 1, line 23)")
    variance_weight: float = Field(1.0, ge=0, description="weight of the reduce-variance loss (1 in Algorithm 1, line 23)")
    negative_slope: float = Field(0.1, ge=0, lt=1, description=(
        "every nn.ReLU of the network becomes LeakyReLU(negative_slope), seed 003 Appendix B's "
        "activation (0.1); 0 keeps the ReLUs, on which the Siamese loss collapses the embedding"))


class PDM(TrainingDefense):
    """Penetration Distortion Maximisation (seed 003, "Improved Detection of Adversarial Attacks
    via Penetration Distortion Maximization", ICLR 2020 submission, §3 and Algorithm 1 of
    Appendix F): on each mini-batch, the reverse cross-entropy of every sample and of its
    Siamese partner (§3.3), plus the Siamese loss |cos(z1, z2) - s| pushing same-class
    embeddings to cosine 1 and other pairs to 0 (§3.1; partner of the same class with
    probability Q), plus the reduce-variance loss, the per-class embedding variance averaged over
    classes (§3.2, eq. 5), all with weight 1 as in Algorithm 1. Embeddings are the pre-logit
    layer ``model.features``. Siamese partners are drawn from the same mini-batch, so one
    forward pass serves both sub-networks. Prediction as in `rce` (negated training logits,
    folded into the model).

    ``build`` swaps the network's ReLUs for LeakyReLU(0.1), the activation of seed 003's
    networks (Appendix B): on a non-negative (ReLU) embedding the cosine target 0 is met by
    all-zero embeddings, and training collapses into dead units (digits-cnn: 15-28% test
    accuracy). The training schedule is the shared `TrainingConfig`, as for `rce`."""

    id: ClassVar[str] = "pdm"
    Config = PDMConfig

    def build(self, architecture, input_shape, num_classes):
        model = architecture.build(input_shape, num_classes)
        if not callable(getattr(model, "features", None)):
            embedding_and_logits(model, torch.empty(0), self.id)  # raises the ConfigError
        if self.config.negative_slope > 0:
            leaky_relus(model, self.config.negative_slope)
        return model

    def loss(self, model, x, y):
        cfg = self.config
        z, logits = embedding_and_logits(model, x, self.id)
        k = logits.shape[1]
        partner = siamese_partners(y, cfg.same_class_prob, k)
        rce = reverse_cross_entropy(logits, y) + reverse_cross_entropy(logits[partner], y[partner])
        return (rce + cfg.siamese_weight * siamese_loss(z, y, partner)
                + cfg.variance_weight * reduce_variance_loss(z, y, k))


@hookimpl
def arena_register_defenses(register):
    register(ReverseCrossEntropy)
    register(PDM)
