"""Neural-sensitivity regularisation (NsLoss) and its combination with Jacobian regularisation
(seed 000: §III-B Algorithm 1, §III-C hyper-parameters and λ calibration, Table I).

NsLoss hooks the output of every ReLU-family activation module and the logits, runs the clean
batch and N copies perturbed on the L2 sphere of radius NsEps through the model in ONE batched
forward pass (``batched = False`` runs them one after the other, for comparison), and sums over
layers Algorithm 1's per-neuron sensitivity weighted by the mean clean activation:

    LS[L] = Σᵢ Σₓ |a_L(x + δᵢ) − a_L(x)| / (len(X)·N·NsEps·len(L)·MLA[L]),
    NsLoss = Σ_L LS[L] · MLA[L],   MLA[L] = mean over the batch of |a_L(x)|.

The weighting cancels the normalisation wherever MLA > 0, so NsLoss = Σ_L mean |Δa_L| / NsEps
over the neurons active on the batch; that form is what is computed (exact, and free of the 0/0
of a neuron that is dead on the whole batch, whose weight MLA = 0 drops it). Perturbed copies are
not clipped to [0, 1]: Algorithm 1 asks for ‖x − xⱼ‖₂ = NsEps exactly. With batch norm in
training mode the statistics are taken over clean and perturbed rows together.

Dropout in training mode draws one mask per sample and applies it to the clean row and to each
of its N copies (:func:`shared_dropout`): the sensitivity is to the input perturbation, not to
two dropout draws. With independent masks |a(x + δ) − a(x)| is dominated by dropout noise, and
minimising it drives the activations to zero (the Keras MNIST CNN of seed 000, with its two
dropout layers, fell from 78% to 20% test accuracy in 3 epochs of Table I's MNIST setting).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.autograd.function import once_differentiable

from arena import hookimpl
from arena.data import DataSplits, Split, seeded_split
from arena.defense import TrainingDefense
from arena.errors import ArenaError
from arena.model import model_device
from arena.training import fit, predict
from arena_builtins.defenses.regularizers import PresetConfig, jacobian_penalty

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.PReLU)
Lam = Annotated[float, Field(ge=0)] | Literal["auto"]


def is_activation(module: nn.Module) -> bool:
    """ReLU-family modules, including custom ones named like one (bounded ReLU)."""
    return isinstance(module, ACTIVATIONS) or "relu" in type(module).__name__.lower()


@contextmanager
def recording(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect every activation module's output, in call order, while the block runs."""
    outputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out))
             for m in model.modules() if is_activation(m)]
    try:
        yield outputs
    finally:
        for h in hooks:
            h.remove()


DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


class _SharedMasks:
    """Per dropout module and call, one mask for the ``B`` rows of a batch, tiled over ``blocks``
    stacked copies of the batch (the batched pass) or reused by the following passes (the
    sequential one, which calls :meth:`next_pass` between passes)."""

    def __init__(self, blocks: int) -> None:
        self.blocks, self.masks, self.calls = blocks, {}, {}

    def next_pass(self) -> None:
        self.calls = {}

    def forward(self, module: nn.Module, original, x: torch.Tensor) -> torch.Tensor:
        if not module.training or module.p == 0 or x.shape[0] % self.blocks:
            return original(x)  # (rows that are not the stacked batch: the module's own draw)
        call = self.calls.get(id(module), 0)
        self.calls[id(module)] = call + 1
        key = (id(module), call)
        if key not in self.masks:  # the module's own draw on ones: its mask, scaled by 1 / (1 − p)
            self.masks[key] = original(torch.ones_like(x[:x.shape[0] // self.blocks]))
        mask = self.masks[key]
        return x * (mask.repeat(self.blocks, *([1] * (mask.dim() - 1))) if self.blocks > 1 else mask)


@contextmanager
def shared_dropout(model: nn.Module, blocks: int) -> Iterator[_SharedMasks]:
    """While the block runs, every dropout module of ``model`` (element- and channel-wise) applies
    the same mask to a sample and to its copies: to each of ``blocks`` stacked copies of the
    batch in one call, or, with ``blocks = 1``, to every pass after ``next_pass()``."""
    shared = _SharedMasks(blocks)
    modules = [m for m in model.modules() if isinstance(m, DROPOUTS)]
    own = [vars(m).get("forward") for m in modules]  # an instance-level forward someone set
    for m in modules:
        m.forward = (lambda mod, orig: lambda x: shared.forward(mod, orig, x))(m, m.forward)
    try:
        yield shared
    finally:
        for m, previous in zip(modules, own):
            if previous is None:
                del m.forward
            else:
                m.forward = previous


def sphere(x: torch.Tensor, radius: float, copies: int) -> torch.Tensor:
    """``copies`` points per sample uniformly on the L2 sphere of ``radius`` around it: (N, B, ...)."""
    d = torch.randn((copies, *x.shape), device=x.device, dtype=x.dtype)
    d = d / d.flatten(2).norm(dim=2).clamp_min(1e-12).view(copies, x.shape[0], *([1] * (x.dim() - 1)))
    return x.unsqueeze(0) + radius * d


def layer_activations(model: nn.Module, x: torch.Tensor, radius: float, copies: int,
                      batched: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per hooked layer (activations in call order, then the logits), the ``((N + 1)·B, ...)``
    outputs of the clean batch (rows ``:B``) and of its N perturbed copies (copy ``i`` in rows
    ``(i + 1)·B:(i + 2)·B``), and the clean logits. ``batched``: the clean batch and its copies
    go through the model in one forward pass; otherwise in N + 1 passes, whose outputs are then
    concatenated."""
    n = x.shape[0]
    xp = sphere(x.detach(), radius, copies)
    with recording(model) as acts, shared_dropout(model, copies + 1 if batched else 1) as masks:
        if batched:
            logits = model(torch.cat([x, xp.flatten(0, 1)]))
            return [*acts, logits], logits[:n]
        clean_logits = model(x)
        runs = [[*acts, clean_logits]]
        for i in range(copies):
            acts.clear()
            masks.next_pass()
            out = model(xp[i])
            runs.append([*acts, out])
    return [torch.cat(outputs) for outputs in zip(*runs)], clean_logits


def clean_and_perturbed(layer: torch.Tensor, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer of :func:`layer_activations` as the clean ``(B, ...)`` and perturbed
    ``(N, B, ...)`` outputs (views)."""
    out = layer.unflatten(0, (copies + 1, -1))
    return out[0], out[1:]


class _Sensitivity(torch.autograd.Function):
    """Σ_f w_f · Σ_{i,b} |a[i + 1, b, f] − a[0, b, f]| for ``a`` of shape ``((N + 1)·B, F)``, with
    a hand-written backward that writes the gradient of every row into one new tensor
    (autograd's slices of the clean and perturbed rows would each zero-fill a gradient of the
    whole tensor) and keeps nothing but ``a``, which the next layer keeps anyway."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, copies: int, weight: torch.Tensor) -> torch.Tensor:
        rows = a.view(copies + 1, -1, weight.numel())
        ctx.save_for_backward(a, weight)
        ctx.copies = copies
        return ((rows[1:] - rows[:1]).abs_().sum(dim=(0, 1)) * weight).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        a, weight = ctx.saved_tensors
        rows = a.view(ctx.copies + 1, -1, weight.numel())
        out = torch.empty_like(rows)
        perturbed = out[1:]  # d|a_p − a_c| / d a_p = sign(a_p − a_c)·w; the clean rows get −Σ_copies
        torch.sub(rows[1:], rows[:1], out=perturbed)
        perturbed.sign_().mul_(weight * grad)
        torch.sum(perturbed, dim=0, out=out[0])
        out[0].neg_()
        return out.view_as(a), None, None


def ns_loss(layers: list[torch.Tensor], radius: float, copies: int) -> torch.Tensor:
    """Σ_L LS[L]·MLA[L] of Algorithm 1 (see the module docstring for the cancelled form), each
    layer being the ``((N + 1)·B, ...)`` output of :func:`layer_activations`: per layer, the mean
    over copies, samples and the neurons active on the clean batch of |a(x + δᵢ) − a(x)|, over
    ``radius``."""
    total = layers[0].new_zeros(())
    for out in layers:
        flat = out.reshape(out.shape[0], -1).contiguous()
        n, width = flat.shape[0] // (copies + 1), flat.shape[1]
        live = flat[:n].detach().ne(0).any(dim=0)  # MLA > 0: the neuron fires on the batch
        weight = live.to(flat.dtype) / (copies * n * width * radius)
        total = total + _Sensitivity.apply(flat, copies, weight)
    return total


class NsConfig(PresetConfig):
    ns_eps: float = Field(1.0, gt=0, description="NsEps: L2 radius of the random perturbations")
    copies: int = Field(5, ge=1, description="N perturbed copies per sample")
    batched: bool = Field(True, description="all copies in one forward pass (False: N + 1 passes)")
    auto_trials: int = Field(4, ge=1, description="λ values tried by each 'auto' search")
    auto_trial_batches: int | None = Field(None, ge=1, description="batches per trial; None: one epoch")
    auto_validation: float = Field(0.1, gt=0, lt=1, description=(
        "'auto' λ: share of the training split held out (stratified, seeded) as §III-C's validation "
        "set; R_0 is measured on training and validation batches, the trials train on the rest"))


def bounded_search(ok, lam0: float, trials: int, span: float = math.sqrt(10)) -> float:
    """The largest λ found with ``ok(λ)`` by bisection in log space over [λ0/span, λ0·span]
    (one order of magnitude around λ0), starting at λ0, with ``trials`` calls of ``ok``.
    If no tried value passes, the lower end λ0/span."""
    lo, hi, mid = math.log(lam0 / span), math.log(lam0 * span), math.log(lam0)
    best = None
    for _ in range(trials):
        if ok(math.exp(mid)):
            best, lo = math.exp(mid), mid
        else:
            hi = mid
        mid = (lo + hi) / 2
    return best if best is not None else math.exp(lo)


class CalibratedDefense(TrainingDefense):
    """A loss CE + Σ_t λ_t·R_t whose weights may be ``"auto"``: seed 000 §III-C's protocol.

    The paper: "1) For a standard model, compute the values of Ri on 10 random batches from the
    training and validation sets and store the average value as Ri0. 2) Choose
    λi0 = log2 NumClasses / Ri0. 3) Perform a binary search [...] For each such λi, start
    training the model for an epoch. If the training cross-entropy loss reaches the
    cross-entropy of a random guess (log2 NumClasses), then λi is too high". A
    :class:`~arena.data.DataSplits` has no validation split, so the calibration holds one out of
    the training split (``auto_validation``, 10% by default, stratified and seeded:
    :meth:`calibration_split`); the test split is never touched. For each ``"auto"`` term,
    before training:

    1. R_t0 = mean of R_t over 10 random batches of the calibration's training part *and* 10 of
       its validation part (fewer where a part has fewer batches), all batches weighing the
       same, on the model as given (the pretrained model when fine-tuning, as in the paper; a
       fresh one when training from scratch), in training mode. "10 random batches from the
       training and validation sets" is read as 10 from each; the paper does not say.
    2. λ_t0 = log2(K) / R_t0.
    3. :func:`bounded_search` around λ_t0, where each trial trains a copy of the model for one
       epoch of the training part (or ``auto_trial_batches``) on CE + λ·R_t alone, and λ is too
       high when the trial's training cross-entropy (mean of its last fifth of batches) reaches
       a random guess's, ln K nats (the paper writes log2 K, the entropy in bits). The trial's
       validation accuracy is recorded but, as in step 3, does not decide.

    ``self.calibration[t]`` records R_t0 (``r0``, with ``r0_train`` and ``r0_validation``, and
    the number of ``batches`` of each part), λ_t0, each trial as (λ, training CE, validation
    accuracy) and the choice (``lam``). The final training then uses the whole training split.
    """

    lam_fields: ClassVar[dict[str, str]] = {}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.lams: dict[str, float | str] = {t: getattr(self.config, f) for t, f in self.lam_fields.items()}
        self.calibration: dict[str, dict[str, Any]] = {}

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              which: tuple[str, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy and the regularisers named in ``which`` on one batch."""
        raise NotImplementedError

    def lam(self, term: str) -> float:
        value = self.lams[term]
        if value == "auto":
            raise ArenaError(f"defense '{self.id}': λ of '{term}' is 'auto'; train() calibrates it first")
        return float(value)

    def loss(self, model, x, y):
        lams = {t: self.lam(t) for t in self.lams}
        ce, regs = self.terms(model, x, y, tuple(t for t, v in lams.items() if v > 0))
        return ce + sum((lams[t] * r for t, r in regs.items()), ce.new_zeros(()))

    def train(self, model: nn.Module, data: DataSplits, *, seed: int = 42, finetune: bool = False,
              progress: bool = False) -> nn.Module:
        for term, field in self.lam_fields.items():
            if getattr(self.config, field) == "auto":
                self.lams[term] = self.calibrate(term, model, data, seed=seed, finetune=finetune)
        return super().train(model, data, seed=seed, finetune=finetune, progress=progress)

    def calibration_split(self, train: Split, seed: int) -> tuple[Split, Split]:
        """The calibration's training and validation sets: ``train`` split by class, a share
        ``auto_validation`` of each class held out (:func:`arena.data.seeded_split`, ``seed``)."""
        fit_part, validation = seeded_split(train.x, train.y, self.config.auto_validation, seed)
        if not len(validation) or not len(fit_part):
            raise ArenaError(f"defense '{self.id}': auto_validation = {self.config.auto_validation} "
                             f"leaves an empty training or validation set out of {len(train)} samples")
        return fit_part, validation

    def calibrate(self, term: str, model: nn.Module, data: DataSplits, *, seed: int, finetune: bool) -> float:
        """λ for ``term`` by seed 000 §III-C (see the class docstring)."""
        k = data.num_classes
        fit_part, validation = self.calibration_split(data.train, seed)
        r_train = self.reference_values(term, model, fit_part, seed)
        r_val = self.reference_values(term, model, validation, seed + 1)
        r0 = sum(r_train + r_val) / len(r_train + r_val)
        lam0 = math.log2(k) / max(r0, 1e-12)
        record: dict[str, Any] = {"r0": r0, "r0_train": sum(r_train) / len(r_train),
                                  "r0_validation": sum(r_val) / len(r_val),
                                  "batches": {"train": len(r_train), "validation": len(r_val)},
                                  "lam0": lam0, "trials": []}

        def ok(lam: float) -> bool:
            ce, val_acc = self.trial(term, lam, model, fit_part, validation, seed, finetune)
            record["trials"].append((lam, ce, val_acc))
            return ce < math.log(k)

        record["lam"] = bounded_search(ok, lam0, self.config.auto_trials)
        self.calibration[term] = record
        return record["lam"]

    def reference_values(self, term: str, model: nn.Module, split: Split, seed: int,
                         batches: int = 10) -> list[float]:
        """R_t on each of ``batches`` random batches of ``split`` (fewer if it has fewer), in
        training mode, the model's parameters unchanged."""
        bs, was_training = self.config.batch_size, model.training
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
        device = model_device(model)
        model.train()
        values = []
        for b in range(min(batches, math.ceil(len(split) / bs))):
            idx = order[b * bs:(b + 1) * bs]
            _, regs = self.terms(model, split.x[idx].to(device), split.y[idx].to(device), (term,))
            values.append(float(regs[term].detach()))
        model.train(was_training)
        return values

    def trial(self, term: str, lam: float, model: nn.Module, train: Split, validation: Split, seed: int,
              finetune: bool) -> tuple[float, float]:
        """Train a copy for one epoch of ``train`` on CE + λ·R_t: its final training
        cross-entropy and its accuracy on ``validation``."""
        cfg, ces = self.config, []
        n = cfg.auto_trial_batches * cfg.batch_size if cfg.auto_trial_batches else None

        def objective(m, x, y):
            ce, regs = self.terms(m, x, y, (term,))
            ces.append(float(ce.detach()))
            return ce + lam * regs[term]

        torch.manual_seed(seed)
        trained = fit(copy.deepcopy(model), train.take(n, seed), objective, epochs=1, batch_size=cfg.batch_size,
                      lr=cfg.finetune_lr if finetune else cfg.lr, optimizer=cfg.optimizer,
                      weight_decay=cfg.weight_decay, seed=seed)
        tail = ces[-max(1, len(ces) // 5):]
        pred = predict(trained, validation.x).argmax(1).cpu()
        return sum(tail) / len(tail), float((pred == validation.y.cpu()).float().mean())


class NsLossConfig(NsConfig):
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "mnist": {"lam": 2.0, "ns_eps": 1.0, "copies": 5, "finetune_epochs": 20, "finetune_lr": 1e-4},
        "cifar10": {"lam": 10.0, "ns_eps": 3.0, "copies": 10, "finetune_epochs": 100, "finetune_lr": 1e-4},
    }
    preset: Literal["mnist", "cifar10"] | None = Field(None, description="seed 000 Table I's settings")
    lam: Lam = Field(2.0, description="λ of NsLoss, or 'auto' for the §III-C calibration")


class NsLoss(CalibratedDefense):
    """NsLoss, neural-sensitivity regularisation (seed 000, "flatten the gradients of the loss
    surface", §III-B Algorithm 1): CE + λ·NsLoss, NsLoss being the sensitivity of every ReLU
    output and of the logits to N random perturbations on the L2 sphere of radius NsEps,
    weighted by the mean activation. Table I (presets): MNIST λ = 2, NsEps = 1, N = 5, 20
    epochs; CIFAR-10 λ = 10, NsEps = 3, N = 10, 100 epochs, both fine-tuning a trained model with
    Adam at lr 1e-4 (§IV-B). ``lam = "auto"`` runs §III-C's calibration."""

    id: ClassVar[str] = "ns-loss"
    Config = NsLossConfig
    lam_fields: ClassVar[dict[str, str]] = {"ns": "lam"}

    def terms(self, model, x, y, which):
        if "ns" not in which:
            return F.cross_entropy(model(x), y), {}
        cfg = self.config
        layers, logits = layer_activations(model, x, cfg.ns_eps, cfg.copies, cfg.batched)
        return F.cross_entropy(logits, y), {"ns": ns_loss(layers, cfg.ns_eps, cfg.copies)}


class CombinedConfig(NsConfig):
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "mnist": {"lam_ns": 2.0, "lam_jac": 0.01, "ns_eps": 1.0, "copies": 5, "finetune_epochs": 20,
                  "finetune_lr": 1e-4},
        "cifar10": {"lam_ns": 10.0, "lam_jac": 0.01, "ns_eps": 3.0, "copies": 10, "finetune_epochs": 100,
                    "finetune_lr": 1e-4},
    }
    preset: Literal["mnist", "cifar10"] | None = Field(None, description="seed 000 Table I's settings")
    lam_ns: Lam = Field(2.0, description="λ1 of NsLoss, or 'auto'")
    lam_jac: Lam = Field(0.01, description="λ2 of the Jacobian regulariser, or 'auto'")
    projections: int | None = Field(None, ge=1, description="Jacobian term: None exact, n random projections")


class Combined(CalibratedDefense):
    """The combined defense of seed 000 (§III-A): CE + λ1·NsLoss + λ2·JacobReg, the Jacobian
    term being "the Jacobian regularization loss as implemented in [14]" (§III-C), Hoffman et
    al. 2019: ``jacobian-reg``'s default form, ½·mean ‖J(x)‖²_F on the clean inputs (their
    ``JacobianReg`` returns ½ tr(JᵀJ) averaged over the batch), so λ2 is their λ_JR. Table I
    (presets): MNIST λ = (2.0, 0.01), NsEps = 1, N = 5, 20 epochs; CIFAR-10 λ = (10.0, 0.01),
    NsEps = 3, N = 10, 100 epochs. Each λ may be ``"auto"`` (§III-C, calibrated one term at a
    time)."""

    id: ClassVar[str] = "combined"
    Config = CombinedConfig
    lam_fields: ClassVar[dict[str, str]] = {"ns": "lam_ns", "jac": "lam_jac"}

    def terms(self, model, x, y, which):
        cfg, regs = self.config, {}
        if "ns" in which:
            layers, _ = layer_activations(model, x, cfg.ns_eps, cfg.copies, cfg.batched)
            regs["ns"] = ns_loss(layers, cfg.ns_eps, cfg.copies)
        xg = x.detach().requires_grad_("jac" in which)
        logits = model(xg)
        if "jac" in which:
            regs["jac"] = jacobian_penalty(logits, xg, cfg.projections, form="hoffman")
        return F.cross_entropy(logits, y), regs


@hookimpl
def arena_register_defenses(register):
    register(NsLoss)
    register(Combined)
