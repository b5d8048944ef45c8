"""Cost of the Keras/TensorFlow autograd bridge: PGD through the bridge vs PGD in TensorFlow.

One process, one Keras model (the Keras MNIST CNN, 28x28 inputs), one batch, the same L∞ PGD
steps (no random start, so both sides compute exactly the same iterates):

* ``tf-direct``: the reference a TensorFlow user writes, a ``tf.function`` step with
  ``tf.GradientTape`` (forward, cross-entropy, input gradient, sign step, projection) in a
  Python loop, plus a clean and a final prediction;
* ``bridge-loop``: the same loop in torch on the wrapped model (``arena.backends.keras``),
  gradients through the bridge, plus a clean and a final prediction;
* ``arena-pgd``: the arena's ``pgd`` attack through the full harness (input checks, clean
  forward, PGD, projection, judgement forward) on the wrapped model;
* ``.../1t``: the same two with one torch thread (``KerasModel.preferred_torch_threads``):
  torch's share is elementwise work on the batch, and its spinning OpenMP workers otherwise
  take cores from TensorFlow's thread pool.

Each timing is the median of ``--repeats`` interleaved runs after a warm-up, wall-clock and
process CPU time; the ratios to ``tf-direct`` are what the bridge costs (target ≤ 1.3x). Run: ``python benchmarks/keras_bridge.py``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import arena  # noqa: E402
from arena.backends.keras import import_keras, torch_threads_for, wrap_keras_model  # noqa: E402


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST test images when installed, else seeded uniform noise."""
    try:
        test = arena.load_plugins().make_dataset("fashion-mnist", test_size=n, train_size=1).load(seed).test
        return test.x, test.y
    except arena.ConfigError:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def tf_pgd(model, x, y, eps: float, alpha: float, steps: int):
    """PGD L∞ written directly in TensorFlow: a tf.function step in a Python loop."""
    import tensorflow as tf

    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    @tf.function(reduce_retracing=True)
    def step(x_adv, x0, y):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = loss_fn(y, model(x_adv, training=False))
        grad = tape.gradient(loss, x_adv)
        x_adv = tf.clip_by_value(x_adv + alpha * tf.sign(grad), x0 - eps, x0 + eps)
        return tf.clip_by_value(x_adv, 0.0, 1.0)

    predict = tf.function(lambda t: tf.argmax(model(t, training=False), axis=1), reduce_retracing=True)

    def run():
        x0 = tf.convert_to_tensor(x.permute(0, 2, 3, 1).numpy())
        labels = tf.convert_to_tensor(y.numpy())
        clean = predict(x0)
        x_adv = x0
        for _ in range(steps):
            x_adv = step(x_adv, x0, labels)
        return clean.numpy(), predict(x_adv).numpy(), x_adv.numpy().transpose(0, 3, 1, 2)

    return run


def bridge_pgd(wrapped, x, y, eps: float, alpha: float, steps: int):
    """The same PGD in torch on the bridged model."""

    def run():
        with torch.no_grad():
            clean = wrapped(x).argmax(1)
        x_adv = x.clone()
        for _ in range(steps):
            x_req = x_adv.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(wrapped(x_req), y, reduction="sum"), x_req)
            x_adv = (x + (x_adv + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
        with torch.no_grad():
            return clean.numpy(), wrapped(x_adv).argmax(1).numpy(), x_adv.numpy()

    return run


def arena_pgd(wrapped, x, y, eps: float, alpha: float, steps: int):
    """The arena's ``pgd`` plugin through the attack harness."""
    attack = arena.load_plugins().make_attack("pgd", steps=steps, step_size=alpha, random_start=False,
                                              early_stop=False)  # every step, like the loops it is timed against
    return lambda: attack(wrapped, x, y, eps)


def with_threads(model, fn):
    def run():
        with torch_threads_for(model):
            return fn()
    return run


def medians(runs: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each run after a warm-up; the runs are interleaved round by
    round, so load from other processes weighs on all of them alike. CPU time is the process's
    (all threads): the steadier figure on a shared machine."""
    for fn in runs.values():
        fn()  # warm-up: tracing, allocation
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            samples[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s))
            for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    keras = import_keras("tensorflow")
    from arena_builtins.keras.architectures import build

    keras.utils.set_random_seed(args.seed)
    model = build("keras-mnist-cnn", (1, 28, 28), 10)
    wrapped = wrap_keras_model(model).eval()
    x, y = data(args.batch, args.seed)
    alpha = args.eps / 8
    runs = {"tf-direct": tf_pgd(model, x, y, args.eps, alpha, args.steps),
            "bridge-loop": bridge_pgd(wrapped, x, y, args.eps, alpha, args.steps),
            "arena-pgd": arena_pgd(wrapped, x, y, args.eps, alpha, args.steps)}
    for name in ("bridge-loop", "arena-pgd"):  # torch on the model's preferred thread count (1)
        runs[f"{name}/1t"] = with_threads(wrapped, runs[name])
    ref, mine = runs["tf-direct"](), runs["bridge-loop"]()
    agree = float((ref[1] == mine[1]).mean())
    print(f"keras-mnist-cnn, batch {args.batch}, {args.steps} PGD L∞ steps, eps {args.eps}; "
          f"torch threads {torch.get_num_threads()}; same final predictions: {agree:.1%}, "
          f"max |x_adv difference| {np.abs(ref[2] - mine[2]).max():.2e}")
    times = medians(runs, args.repeats)
    wall0, cpu0 = times["tf-direct"]
    print(f"{'run':14s} {'wall ms':>9s} {'ratio':>6s} {'cpu ms':>9s} {'ratio':>6s}   (median of {args.repeats})")
    for name, (wall, cpu) in times.items():
        print(f"{name:14s} {wall * 1000:9.1f} {wall / wall0:5.2f}x {cpu * 1000:9.1f} {cpu / cpu0:5.2f}x")

if __name__ == "__main__":
    main()
