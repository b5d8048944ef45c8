"""The built-in architectures: shapes, the features/classifier layout, ReLU modules, shortcuts."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import arena
from arena_builtins.architectures import cifar, papers, small
from arena_builtins.datasets import digits

# id -> config small enough for a fast forward pass; the layout stays the paper's.
ARCHS = {
    "digits-cnn": {},
    "mlp": {"hidden": [32, 16]},
    "keras-mnist-cnn": {"width": 0.25},
    "tf-tutorial-cnn": {"width": 0.25},
    "seed001-cnn": {"width": 0.25},
    "seed001-resnet": {"width": 0.25},
    "cifar-cnn4": {"width": 0.25},
    "vgg19": {"width": 0.125},
    "resnet56": {"width": 0.5, "depth": 20},
}
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


@pytest.fixture(scope="module")
def registry():
    modules = [("architectures-small", small), ("architectures-papers", papers),
               ("architectures-cifar", cifar)]
    return arena.load_plugins(extra=modules, entry_points=False)


def build(registry, arch_id, shape, num_classes=10, **overrides):
    torch.manual_seed(0)
    config = {**ARCHS[arch_id], **overrides}
    return registry.make_architecture(arch_id, **config).build(shape, num_classes)


def test_every_architecture_is_registered(registry):
    assert set(registry.architectures) == set(ARCHS)


@pytest.mark.parametrize("arch_id", sorted(ARCHS))
def test_docstring_cites_a_seed_paper_and_section(registry, arch_id):
    doc = registry.architectures[arch_id].__doc__
    assert re.search(r"seed 00\d.*§", doc, re.S | re.I), doc


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch_id", sorted(ARCHS))
def test_logits_and_embedding_layout(registry, arch_id, shape):
    model = build(registry, arch_id, shape, num_classes=7).eval()
    x = torch.rand(3, *shape)
    with torch.no_grad():
        logits = model(x)
        emb = model.features(x)
    assert logits.shape == (3, 7) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert isinstance(model.classifier, nn.Linear)
    assert emb.shape == (3, model.classifier.in_features)
    torch.testing.assert_close(model.classifier(emb), logits)
    # logits, not probabilities: rows do not sum to one
    assert not torch.allclose(logits.sum(1), torch.ones(3), atol=1e-3)


@pytest.mark.parametrize("arch_id", sorted(ARCHS))
def test_seeded_initialisation_is_deterministic(registry, arch_id):
    a = build(registry, arch_id, (1, 8, 8)).state_dict()
    b = build(registry, arch_id, (1, 8, 8)).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


class Zero(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


@pytest.mark.parametrize("arch_id", sorted(ARCHS))
def test_every_activation_is_a_relu_module_in_use(registry, arch_id):
    model = build(registry, arch_id, (1, 8, 8)).eval()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(isinstance(m, nn.LeakyReLU) for m in model.modules())
    calls = []
    for m in relus:
        m.register_forward_hook(lambda mod, inp, out: calls.append(mod))
    x = torch.rand(2, 1, 8, 8)
    model(x)
    assert {id(m) for m in calls} == {id(m) for m in relus}
    # swapping the modules (as a bounded-ReLU defense does) reaches the embedding
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.ReLU):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], Zero())
    assert torch.count_nonzero(model.features(x)) == 0


@pytest.mark.parametrize(
    ("arch_id", "config", "shape", "params"),
    [
        ("keras-mnist-cnn", {}, (1, 28, 28), 1_199_882),  # Keras mnist_cnn.py summary
        ("tf-tutorial-cnn", {}, (1, 28, 28), 3_274_634),  # TensorFlow "Deep MNIST" tutorial
        ("seed001-cnn", {}, (1, 28, 28), 710_218),  # cleverhans basic CNN, nb_filters=64
        ("vgg19", {}, (3, 32, 32), 20_040_522),  # VGG19-BN, CIFAR head
        ("resnet56", {}, (3, 32, 32), 853_018),  # He et al. Table 6: 0.85M
    ],
)
def test_full_size_parameter_counts_match_the_references(registry, arch_id, config, shape, params):
    model = registry.make_architecture(arch_id, **config).build(shape, 10)
    assert sum(p.numel() for p in model.parameters()) == params


def test_seed001_cnn_mnist_geometry_matches_cleverhans(registry):
    model = registry.make_architecture("seed001-cnn").build((1, 28, 28), 10)
    assert model.classifier.in_features == 128  # 28 -> 14 (same) -> 5 (valid) -> 1 (valid)


def test_seed001_resnet_shortcut_carries_layer_two(registry):
    model = build(registry, "seed001-resnet", (1, 28, 28)).eval()
    body = model.features
    last = body.branch[-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        emb = body(x)
        expected = body.flatten(body.pool(torch.relu(body.stem(x))))
    torch.testing.assert_close(emb, expected)
    assert emb.abs().sum() > 0 and not torch.allclose(emb[0], emb[1])
    assert body.stem[2].out_channels == last.out_channels  # 128-ch conv added to 128-ch conv


def test_seed001_resnet_output_depends_on_the_shortcut(registry):
    model = build(registry, "seed001-resnet", (1, 28, 28)).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        with_shortcut = model(x)
        body = model.features
        plain = model.classifier(body.flatten(body.pool(body.relu(body.branch(body.stem(x))))))
    assert not torch.allclose(with_shortcut, plain)


@pytest.mark.parametrize("shortcut", ["a", "b"])
def test_resnet56_blocks_pass_the_shortcut(registry, shortcut):
    model = build(registry, "resnet56", (3, 32, 32), shortcut=shortcut).eval()
    blocks = [m for m in model.modules() if isinstance(m, cifar.BasicBlock)]
    assert len(blocks) == 9  # depth 20: 3 stages x 3 blocks
    for block in blocks:  # residual branches off: only the shortcuts remain
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        emb = model.features(x)
    assert emb.abs().sum() > 0 and not torch.allclose(emb[0], emb[1])


def test_resnet56_default_depth_and_leaky_option(registry):
    model = registry.make_architecture("resnet56", width=0.25).build((3, 32, 32), 10)
    assert sum(isinstance(m, cifar.BasicBlock) for m in model.modules()) == 27
    leaky = registry.make_architecture("resnet56", width=0.25, depth=20, negative_slope=0.1)
    assert any(isinstance(m, nn.LeakyReLU) for m in leaky.build((3, 32, 32), 10).modules())


def test_cifar_cnn4_layout(registry):
    model = registry.make_architecture("cifar-cnn4").build((3, 32, 32), 10)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128, 256, 256]
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.25 for m in model.features) == 4
    assert model.classifier.in_features == 512


@pytest.mark.parametrize(
    ("arch_id", "config", "field"),
    [
        ("digits-cnn", {"widht": 2}, "widht"),
        ("mlp", {"hidden": [0]}, "hidden"),
        ("resnet56", {"depth": 55}, "depth"),
        ("resnet56", {"shortcut": "c"}, "shortcut"),
        ("vgg19", {"width": -1}, "width"),
    ],
)
def test_bad_config_is_a_config_error(registry, arch_id, config, field):
    with pytest.raises(arena.ConfigError, match=field):
        registry.make_architecture(arch_id, **config)


def test_digits_cnn_learns_digits_quickly():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steady under a busy CPU; about half a second
    try:
        torch.manual_seed(0)
        data = digits.Digits().load(seed=0)
        model = small.DigitsCNN().build(data.input_shape, data.num_classes)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(0)
        for _ in range(5):
            for idx in torch.randperm(len(data.train), generator=g).split(128):
                loss = nn.functional.cross_entropy(model(data.train.x[idx]), data.train.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(data.test.x).argmax(1) == data.test.y).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert acc > 0.8, acc
