"""The seed papers' networks and simplest training-time defenses written in Keras 3.

``architectures`` builds the Keras twins of :mod:`arena_builtins.architectures.papers` (same layers,
same padding rules, channels-last), ``defenses`` holds the Keras training recipes of ``gda``,
``brelu``, ``gda-brelu`` and ``label-smoothing``, and ``convert`` copies a torch model's weights
into its Keras twin; ``train`` trains either version. None of these is an ``arena`` plugin:
``commands`` (entry point ``commands-keras`` of the ``arena.commands`` group) adds
``arena train``, which uses them, and the resulting ``.keras`` files enter tournaments through
the ``keras`` backend and the ``model-file`` defense. Importing ``architectures``, ``defenses``
or ``convert`` imports Keras; ``commands`` imports click only.
"""
