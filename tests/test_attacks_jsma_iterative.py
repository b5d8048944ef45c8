"""BIM, Random + FGSM, minimal-ε FGSM and JSMA: the behaviour each paper describes on the small
trained digits model. Contract rows: tests/test_contracts.py."""
from __future__ import annotations

import itertools

import pytest
import torch

from arena import testing
from arena.errors import ConfigError
from arena_builtins.attacks import iterative, jsma
from arena_builtins.attacks.gradient import loss_gradient


def make(attack_id: str, **params):
    return testing.registry().make_attack(attack_id, **params)


@pytest.fixture(scope="module")
def data():
    return testing.trained_model(), *testing.attack_batch(48)


# --- BIM --------------------------------------------------------------------------------------


def test_bim_beats_fgsm_at_the_same_eps(data):
    model, x, y = data
    rates = []
    for eps in (0.15, 0.2):
        fgsm = make("fgsm")(model, x, y, eps, seed=0).success.float().mean()
        bim = make("bim")(model, x, y, eps, seed=0).success.float().mean()
        assert bim >= fgsm
        rates.append(float(bim - fgsm))
    assert sum(rates) > 0


def test_bim_is_pgd_without_random_start(data):
    model, x, y = data
    bim = make("bim", steps=4)(model, x, y, 0.1, seed=0)
    pgd = make("pgd", steps=4, step_size=0.025, random_start=False)(model, x, y, 0.1, seed=0)
    assert torch.equal(bim.x_adv, pgd.x_adv) and torch.equal(bim.queries, pgd.queries)


# --- Random + FGSM ----------------------------------------------------------------------------


def test_rand_fgsm_is_a_random_sign_step_then_fgsm(data):
    model, x, y = data
    eps, alpha = 0.2, 0.05
    result = make("rand-fgsm", alpha=alpha)(model, x, y, eps, seed=3)
    torch.manual_seed(3)
    x_rand = (x + alpha * torch.randn_like(x).sign()).clamp(0, 1)
    grad = loss_gradient(model, x_rand, y, None)
    expected = (x_rand + (eps - alpha) * grad.sign()).clamp(0, 1)
    assert torch.allclose(result.x_adv, expected, atol=1e-6)
    assert float((result.x_adv - x).abs().max()) <= eps + 1e-6
    fgsm = make("fgsm")(model, x, y, eps, seed=3)
    assert not torch.equal(result.x_adv, fgsm.x_adv)


def test_rand_fgsm_below_alpha_falls_back_to_half_eps(data):
    model, x, y = data
    result = make("rand-fgsm", alpha=0.05)(model, x, y, 0.04, seed=0)
    delta = (result.x_adv - x).abs()
    assert float(delta.max()) <= 0.04 + 1e-6
    # α = ε/2: the unclipped features moved by 0 or ε (noise and gradient signs agree or not)
    inner = (x > 0.05) & (x < 0.95)
    assert torch.all((delta[inner] < 1e-6) | ((delta[inner] - 0.04).abs() < 1e-6))


# --- minimal-ε FGSM ---------------------------------------------------------------------------


def test_fgsm_minimal_finds_the_first_grid_eps_that_fools(data):
    model, x, y = data
    x, y = x[:16], y[:16]
    attack = make("fgsm-minimal", eps_step=0.02, max_eps=0.5)
    result = attack(model, x, y, seed=0)
    grid = attack.grid().tolist()
    fooled = torch.stack([make("fgsm")(model, x, y, eps).success for eps in grid], dim=1)
    assert result.success.any() and torch.equal(result.success, fooled.any(dim=1))
    for i in torch.nonzero(result.success).flatten().tolist():
        k = int(fooled[i].to(torch.uint8).argmax())
        assert not fooled[i, :k].any() and fooled[i, k]  # at grid[k-1] FGSM does not fool
        at_k = make("fgsm")(model, x[i:i + 1], y[i:i + 1], grid[k])
        assert torch.allclose(result.x_adv[i], at_k.x_adv[0], atol=1e-6)
        assert result.distance[i] == pytest.approx(float(at_k.distance[0]), abs=1e-6)
    assert torch.isinf(result.distance[~result.success]).all()


def test_fgsm_minimal_chunks_give_the_same_answer(data, monkeypatch):
    model, x, y = data
    whole = make("fgsm-minimal", eps_step=0.02)(model, x, y, seed=0)
    monkeypatch.setattr(iterative, "_CANDIDATE_BUDGET", x[0].numel() * x.shape[0] * 3)
    chunked = make("fgsm-minimal", eps_step=0.02)(model, x, y, seed=0)
    assert torch.equal(whole.x_adv, chunked.x_adv) and torch.equal(whole.success, chunked.success)
    assert (chunked.queries <= whole.queries).all() and (chunked.queries < whole.queries).any()


# --- JSMA -------------------------------------------------------------------------------------


def test_jsma_targeted_reaches_targets_with_few_features(data):
    model, x, y = data
    targets = (y + 1 + torch.arange(len(y)) % 9) % 10
    result = make("jsma")(model, x, y, targets=targets, seed=0)
    features = x[0].numel()
    assert float(result.success.float().mean()) >= 0.9
    assert float(result.distance[result.success].median()) <= features / 4
    pred = model(result.x_adv).argmax(1)
    assert torch.equal(pred[result.success], targets[result.success])


def test_jsma_respects_max_distortion(data):
    model, x, y = data
    targets = (y + 1) % 10
    result = make("jsma", max_distortion=0.1)(model, x, y, targets=targets, seed=0)
    changed = (result.x_adv != x).flatten(1).sum(dim=1)
    assert int(changed.max()) <= 6  # ⌊0.1 · 64⌋
    assert float(result.success.float().mean()) < 1.0


def test_jsma_single_pixel_changes_one_feature_per_iteration(data):
    model, x, y = data
    targets = (y + 3) % 10
    attack = make("jsma", single_pixel=True, max_iterations=20)
    result = attack(model, x, y, targets=targets, seed=0)
    changed = (result.x_adv != x).flatten(1).sum(dim=1)
    assert float(result.success.float().mean()) >= 0.7
    assert int(changed.max()) <= 20 and torch.all(changed <= result.queries - 1)
    assert torch.allclose(result.x_adv[result.x_adv != x], torch.tensor(1.0))  # θ = +1


def test_jsma_batched_equals_per_sample(data):
    model, x, y = data
    x, y = x[:5], y[:5]
    targets = (y + 2) % 10
    for params in ({}, {"single_pixel": True}, {"saliency": "pairs"}, {"saliency": "target"}):
        batched = make("jsma", **params)(model, x, y, targets=targets)
        for i in range(len(y)):
            alone = make("jsma", **params)(model, x[i:i + 1], y[i:i + 1], targets=targets[i:i + 1])
            assert torch.equal(alone.x_adv[0], batched.x_adv[i])
            assert alone.queries[0] == batched.queries[i]


def test_jsma_pair_search_matches_brute_force():
    torch.manual_seed(0)
    n, d = 4, 7
    alpha, beta = torch.randn(n, d), torch.randn(n, d)
    domain = torch.rand(n, d) > 0.2
    picks, found = jsma._best_pairs(alpha, beta, domain)
    for i in range(n):
        scores = {(p, q): -(alpha[i, p] + alpha[i, q]) * (beta[i, p] + beta[i, q])
                  for p, q in itertools.permutations(range(d), 2)
                  if domain[i, p] and domain[i, q] and alpha[i, p] + alpha[i, q] > 0
                  and beta[i, p] + beta[i, q] < 0}
        assert bool(found[i]) == bool(scores)
        if scores:
            assert scores[tuple(picks[i].tolist())] == max(scores.values())


@pytest.mark.parametrize("ties", [False, True])
def test_jsma_pareto_candidates_give_the_full_pair_search(ties):
    """The search among the first two Pareto layers finds a pair as good as the exhaustive one
    (D = 150; with ``ties``, integer saliencies make many features equal)."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        n, d = 6, 150
        alpha = torch.randn(n, d, generator=gen) * 2 + torch.randn(n, 1, generator=gen)
        beta = torch.randn(n, d, generator=gen) + torch.randn(n, 1, generator=gen)
        if ties:
            alpha, beta = alpha.round(), beta.round()
        domain = torch.rand(n, d, generator=gen) < torch.rand(n, 1, generator=gen)
        picks, found = jsma._best_pairs(alpha, beta, domain)
        sa, sb = alpha[:, :, None] + alpha[:, None, :], beta[:, :, None] + beta[:, None, :]
        ok = (sa > 0) & (sb < 0) & domain[:, :, None] & domain[:, None, :] & ~torch.eye(d, dtype=torch.bool)
        best = torch.where(ok, -sa * sb, torch.tensor(float("-inf"))).flatten(1).amax(1)
        assert torch.equal(found, torch.isfinite(best))
        p, q = picks[found, 0], picks[found, 1]
        rows = found.nonzero().squeeze(1)
        got = -(alpha[rows, p] + alpha[rows, q]) * (beta[rows, p] + beta[rows, q])
        assert (p != q).all() and domain[rows, p].all() and domain[rows, q].all()
        torch.testing.assert_close(got, best[found])


def test_jsma_blocked_pair_search_is_exact(data, monkeypatch):
    model, x, y = data
    targets = (y + 1) % 10
    whole = make("jsma", saliency="pairs")(model, x[:12], y[:12], targets=targets[:12])
    monkeypatch.setattr(jsma, "_PAIR_BLOCK", 64 * 5)
    blocked = make("jsma", saliency="pairs")(model, x[:12], y[:12], targets=targets[:12])
    assert torch.equal(whole.x_adv, blocked.x_adv)


@pytest.mark.parametrize("params", [{"untargeted_goal": "random"}, {"untargeted_goal": "runner-up"},
                                    {"single_pixel": True, "untargeted_goal": "runner-up"},
                                    {"fallback": False}])
def test_jsma_untargeted_stops_at_the_first_misclassification(data, params):
    model, x, y = data
    x, y = x[:24], y[:24]
    result = make("jsma", **params)(model, x, y, seed=0)
    assert float(result.success.float().mean()) >= 0.9
    assert float(result.success_at(12).float().mean()) >= 0.6
    # the batch starts correctly classified, so every success took at least one step
    assert torch.all(result.queries[result.success] >= 2)


def test_jsma_revisit_steps_features_by_theta(data):
    model, x, y = data
    x, y = x[:16], y[:16]
    result = make("jsma", theta=0.1, revisit=True)(model, x, y, seed=0)
    delta = (result.x_adv - x)[result.x_adv != x]
    steps = delta / 0.1
    at_bound = result.x_adv[result.x_adv != x] == 1.0
    assert torch.all(at_bound | ((steps - steps.round()).abs() < 1e-3))
    assert float(result.success.float().mean()) >= 0.8


def test_jsma_decreasing_theta_only_lowers_features(data):
    model, x, y = data
    result = make("jsma", theta=-1.0)(model, x, y, seed=0)
    assert torch.all(result.x_adv <= x) and float(result.success.float().mean()) >= 0.5


def test_jsma_rejects_zero_theta():
    with pytest.raises(ConfigError, match="theta"):
        make("jsma", theta=0.0)


# --- JSMA: which features the saliency maps pick -------------------------------------------


def _first_step(model, x, y, targets, **params):
    """The features one JSMA iteration changes, per sample (as index sets)."""
    out = make("jsma", max_iterations=1, **params)(model, x, y, targets=targets, seed=0).x_adv
    return [set(row.nonzero().flatten().tolist()) for row in (out != x).flatten(1)]


def _top2(score: torch.Tensor, movable: torch.Tensor) -> list[set]:
    return [set(row.topk(2).indices.tolist()) for row in score.masked_fill(~movable, float("-inf"))]


@pytest.mark.parametrize("theta", [1.0, 0.3])
def test_jsma_default_picks_the_largest_first_order_gain_of_the_targets_log_softmax(data, theta):
    """The default map: ∂ log softmax_t / ∂x_i times the change θ can still make (clipped to 1)."""
    model, x, y = data
    x, y = x[:16], y[:16]
    targets = (y + 3) % 10
    xr = x.clone().requires_grad_(True)
    logp = torch.log_softmax(model(xr), dim=1).gather(1, targets.unsqueeze(1)).sum()
    (grad,) = torch.autograd.grad(logp, xr)
    gain = (grad * ((x + theta).clamp(0, 1) - x)).flatten(1)
    expected = _top2(gain, (x < 1).flatten(1))
    assert _first_step(model, x, y, targets, theta=theta) == expected
    # the ranking is not ART's (raw ∂Z_t/∂x) on this batch
    assert _first_step(model, x, y, targets, theta=theta, saliency="target") != expected


def test_jsma_target_map_is_arts_top_two_target_logit_derivatives(data):
    model, x, y = data
    x, y = x[:16], y[:16]
    targets = (y + 3) % 10
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xr).gather(1, targets.unsqueeze(1)).sum(), xr)
    expected = _top2(grad.flatten(1), (x < 1).flatten(1))
    assert _first_step(model, x, y, targets, saliency="target") == expected


def test_jsma_soft_margin_gradient_is_the_log_softmax_gradient_rescaled():
    """``_soft_margin_gradient`` = ∇ log softmax_c / (1 − p_c), also where p_c rounds to 1."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 5)
    x = torch.rand(6, 12, requires_grad=True)
    goal = torch.tensor([0, 1, 2, 3, 4, 0])
    logits = layer(x)
    logp = torch.log_softmax(logits, dim=1)
    (want,) = torch.autograd.grad(logp.gather(1, goal.unsqueeze(1)).sum(), x, retain_graph=True)
    got = jsma._soft_margin_gradient(logits, x, goal, torch.ones(6, dtype=torch.bool))
    scale = 1 - logp.detach().gather(1, goal.unsqueeze(1)).exp()
    torch.testing.assert_close(got * scale, want, rtol=1e-4, atol=1e-6)
    confident = x.detach().clone().requires_grad_(True)  # p_c = 1 in float32: same direction
    logits = 200 * layer(confident)
    top = logits.detach().argmax(1)
    got = jsma._soft_margin_gradient(logits, confident, top, torch.ones(6, dtype=torch.bool))
    assert torch.isfinite(got).all() and (got.flatten(1).norm(dim=1) > 0).all()


def test_jsma_default_fools_more_with_fewer_features_than_the_paper_and_art_maps(data):
    """Where the pair map (the old default) and ART's map changed more pixels: targeted and
    untargeted, at γ = 1 and within γ = 0.1."""
    model, x, y = data
    targets = (y + 1) % 10
    for goal in (targets, None):
        ours = make("jsma")(model, x, y, targets=goal, seed=0)
        for params in ({"saliency": "pairs"}, {"saliency": "target"},
                       {"saliency": "pairs", "untargeted_goal": "random"}):
            peer = make("jsma", **params)(model, x, y, targets=goal, seed=0)
            assert bool(ours.success.all()) and bool(peer.success.all())
            assert float(ours.distance.mean()) <= 0.8 * float(peer.distance.mean())
            assert float(ours.distance.median()) < float(peer.distance.median())
    ours = make("jsma", max_distortion=0.1)(model, x, y, targets=targets, seed=0)
    for saliency in ("pairs", "target"):
        peer = make("jsma", max_distortion=0.1, saliency=saliency)(model, x, y, targets=targets, seed=0)
        assert float(ours.success.float().mean()) >= float(peer.success.float().mean()) + 0.15
    assert int((ours.x_adv != x).flatten(1).sum(dim=1).max()) <= 6  # ⌊0.1 · 64⌋, never past γ·D
