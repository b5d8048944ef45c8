"""The seed papers' networks and simplest training-time defenses written in Keras 3.

``architectures`` builds the Keras twins of :mod:`arena_builtins.architectures.papers` (same layers,
same padding rules, channels-last), ``defenses`` holds the Keras training recipes of ``gda``,
``brelu``, ``gda-brelu`` and ``label-smoothing``, and ``convert`` copies a torch model's weights
into its Keras twin. Nothing here is an entry-point plugin: ``arena train --backend keras``
(:mod:`arena.backends.keras_train`) uses it, and the resulting ``.keras`` files enter
tournaments through the ``keras`` backend and the ``model-file`` defense. Importing these
modules imports Keras.
"""
