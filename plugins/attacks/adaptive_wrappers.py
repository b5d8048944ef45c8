"""Adaptive wrappers around white-box attacks: ``eot`` (averaged logits against randomised
defenses), ``bpda`` (differentiable stand-ins for non-differentiable preprocessing) and
``repeated`` (seed 004's attacker of repeated DLN rounds). Registered by
:mod:`arena_builtins.attacks.adaptive`.

A wrapper builds its inner attack from its reference (resolved against the registry that
built the wrapper) and runs the inner attack's
``run`` on a surrogate module (averaged, or BPDA) that it builds from the declared adaptive hooks
of the model it is given (``randomized``, ``bpda_forward``), never from a defense's internals.
The harness around the wrapper still projects, measures and judges on the real model.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator
from torch import nn

from arena.attack import Attack, RunOutput
from arena.plugin import PluginConfig
from arena.refs import AttackRef
from arena.threat import Knowledge, Norm


def unpack(out: Any, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_adv, queries)`` from what an attack's ``run`` returned (a tensor or a RunOutput)."""
    x_adv, queries = (out.x_adv, out.queries) if isinstance(out, RunOutput) else (out, None)
    if queries is None:
        queries = torch.zeros(n, dtype=torch.long, device=device)
    return x_adv, queries.to(device=device, dtype=torch.long)


class AveragedLogits(nn.Module):
    """``(1/n) Σ_k model(x)``: the model's logits averaged over ``samples`` calls, batched as
    copies of the batch (at most ``max_batch`` rows per call); gradients are EOT estimates."""

    def __init__(self, model: nn.Module, samples: int, max_batch: int) -> None:
        super().__init__()
        self.model, self.samples, self.max_batch = model, samples, max_batch
        # The average estimates the expectation; the judged model still answers at random, so
        # an inner attack must not stop at the first point the average calls adversarial.
        self.randomized = bool(getattr(model, "randomized", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, per = x.shape[0], max(1, self.max_batch // max(x.shape[0], 1))
        total, done = None, 0
        while done < self.samples:
            k = min(per, self.samples - done)
            z = self.model(x.repeat(k, *([1] * (x.dim() - 1)))).view(k, n, -1).sum(0)
            total, done = z if total is None else total + z, done + k
        return total / self.samples


class BPDAModule(nn.Module):
    """The model's ``bpda_forward`` (same outputs, differentiable backward pass) when it
    declares one, else the model itself (the identity approximation of Athalye et al.)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bpda = getattr(self.model, "bpda_forward", None)
        return bpda(x) if callable(bpda) else self.model(x)


class WrapperConfig(PluginConfig):
    inner: AttackRef = Field("cw-l2", validate_default=True,
                             description="the white-box attack to run: an id, or {id, params}")

    @field_validator("inner")
    @classmethod
    def _gradient_attack(cls, ref: AttackRef) -> AttackRef:
        """The inner attack must use gradients (white-box or adaptive): the wrapper hands it a
        module, not a query oracle."""
        knowledge = ref.cls.knowledge
        if knowledge not in (Knowledge.WHITE_BOX, Knowledge.ADAPTIVE):
            raise ValueError(f"inner attack '{ref.id}' is {knowledge.value}; it needs a white-box (gradient) attack")
        return ref


class Wrapper(Attack):
    """An adaptive attack that runs a white-box ``inner`` attack on a surrogate of the model.

    Norm, minimal-or-fixed-budget and targeted support are the inner attack's (per instance;
    the class attributes describe the default inner attack)."""

    knowledge: ClassVar[Knowledge] = Knowledge.ADAPTIVE

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.inner: Attack = self.config.inner.build()
        self.minimal = self.inner.minimal
        self.supports_targeted = self.inner.supports_targeted

    @property
    def threat_norm(self) -> Norm:
        return self.inner.threat_norm

    def surrogate(self, model: nn.Module) -> tuple[nn.Module, int]:
        """The module the inner attack differentiates, and the model calls per module call."""
        raise NotImplementedError

    def run(self, model, x, y, eps, targets):
        module, calls = self.surrogate(model)
        self.inner.context = getattr(self, "context", None)  # an adaptive inner attack's defense
        x_adv, queries = unpack(self.inner.run(module, x, y, eps, targets), x.shape[0], x.device)
        return RunOutput(x_adv, queries * calls)


class EOTConfig(WrapperConfig):
    samples: int = Field(100, ge=1, description="n: logits averaged per forward (seed 004: 500, 5000)")
    max_batch: int = Field(4096, ge=1, description="rows per model call when batching the n copies")


class EOT(Wrapper):
    """Expectation over transformation with averaged logits against randomised defenses
    (Athalye, Carlini and Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML
    2018, §4.2; seed 004 §2 "NAC" and Table 5: "query an image n times and then average the
    logits before using it for the CW attack", n = 500 and 5,000). The ``inner`` attack
    (default ``cw-l2``) runs on a module whose forward averages ``samples`` calls of the model,
    so its gradients and its own success checks are expectation estimates. A model that does
    not declare ``randomized`` is called once (averaging a deterministic model changes nothing).
    Queries count every model call."""

    id: ClassVar[str] = "eot"
    norm: ClassVar[Norm] = Norm.L2
    minimal: ClassVar[bool] = True
    Config = EOTConfig

    def surrogate(self, model):
        n = self.config.samples if getattr(model, "randomized", False) else 1
        return AveragedLogits(model, n, self.config.max_batch), n


class BPDAConfig(WrapperConfig):
    inner: AttackRef = Field("pgd", validate_default=True,
                             description="the white-box attack to run: an id, or {id, params}")


class BPDA(Wrapper):
    """Backward pass differentiable approximation (Athalye, Carlini and Wagner, "Obfuscated
    Gradients Give a False Sense of Security", ICML 2018, §4.1): the ``inner`` attack (default
    ``pgd``) differentiates the model's declared ``bpda_forward`` (for feature squeezing: the
    squeezer's forward pass with an identity backward pass), or, for a model that declares none,
    the model itself. Outputs are the model's, so the inner attack's success checks are exact."""

    id: ClassVar[str] = "bpda"
    norm: ClassVar[Norm] = Norm.LINF
    Config = BPDAConfig

    def surrogate(self, model):
        return BPDAModule(model), 1


class RepeatedConfig(WrapperConfig):
    inner: AttackRef = Field("fgsm", validate_default=True,
                             description="the fixed-budget white-box attack to repeat: an id, or {id, params}")
    rounds: int = Field(1, ge=1, description="attack rounds; round r > 0 starts from round r-1's output")

    @field_validator("inner")
    @classmethod
    def _fixed_budget(cls, ref: AttackRef) -> AttackRef:
        if ref.build().minimal:
            raise ValueError(f"inner attack '{ref.id}' is a minimal-perturbation attack; repeated rounds "
                             "need a fixed-budget one")
        return ref


class Repeated(Wrapper):
    """The attacker of repeated DLN (Nguyen, Wang and Sinha, "A Learning and Masking Approach to
    Secure Learning", GameSec 2018, seed 004 §2 "Repeated DLN" and Tables 2-3).

    What seed 004 describes: round i of the *defense* attacks C_i = D_{i-1}→C with FGSM and
    retrains the sanitiser D; the reported figure FGSM(C^i_M, OTD) is one FGSM run, white-box
    through the sanitiser, against the newest C_i. There is no multi-round *attack* in the paper.

    What this attack does: ``rounds = 1`` runs the ``inner`` fixed-budget attack (default
    ``fgsm``, whose default is L∞) once against the whole model it is given, C∘D for a DLN
    entrant, which is exactly seed 004's FGSM(C^i, OTD). ``rounds > 1`` is our extension: each
    further round re-runs the inner attack from the previous round's output on the samples not
    yet misclassified, and projects back onto the ε-ball around the clean input (with FGSM this is
    an iterative FGSM of step ε); a sample keeps the first example that fools the model."""

    id: ClassVar[str] = "repeated"
    norm: ClassVar[Norm] = Norm.LINF
    Config = RepeatedConfig

    def run(self, model, x, y, eps, targets):
        norm = self.inner.threat_norm
        self.inner.context = getattr(self, "context", None)
        best, found = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for _ in range(self.config.rounds):
            rows = (~found).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            tgt = None if targets is None else targets[rows]
            out, q = unpack(self.inner.run(model, best[rows], y[rows], eps, tgt), rows.numel(), x.device)
            adv = (x[rows] + norm.project(out - x[rows], eps)).clamp(0, 1)
            with torch.no_grad():
                pred = model(adv).argmax(1)
            fooled = pred == tgt if tgt is not None else pred != y[rows]
            best[rows], found[rows] = adv, fooled
            queries[rows] += q + 1
        return RunOutput(best, queries)
