"""The loops of every stage, one module per stage, each taking explicit arguments and
returning plain values (deit's ``engine.py`` habit); the top-level scripts wire them.

- ``engine.pcss``: seeds - ``train_one_epoch``, ``fim_round``, ``generate_seeds``, ``validate``.
- ``engine.pretrain``: the toy set's self-supervised stand-in for ImageNet pre-training.
"""
