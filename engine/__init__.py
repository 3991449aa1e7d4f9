"""The loops of every stage, one module per stage, each taking explicit arguments and
returning plain values (deit's ``engine.py`` habit); the top-level scripts wire them.

- ``engine.training``: what every training loop shares - ``train_epoch`` (batches -> a
  stage's step -> optimiser step -> ``MetricMeter``) and ``Trainer``, the skeleton of the
  training scripts (claim, log, seed, resume, epochs, save).
- ``engine.seeds``: seeds - ``pcss_step``, ``fim_round``, ``generate_seeds``,
  ``validate`` and ``SeedWriter`` (the outputs of ``infer_PCSS.py``).
- ``engine.refine``: refinement - AffinityNet's ``affinity_step`` and
  ``random_walk_masks`` (pseudo masks).
- ``engine.segment``: segmentation - ``segmentation_step`` and ``predict``.
- ``engine.toy_pretrain``: the toy set's self-supervised stand-in for ImageNet pre-training.
- ``engine.pipeline``: the runner of ``pipeline.py`` - the stages as the scripts' command
  lines, the preflight, skipping and resuming, the report.
- ``engine.run_folder``: ``RunFolder``, every path a run reads or writes under
  ``experiment/<name>/`` (torch-free).
- ``engine.common``: what the loops share - ``prepare_model`` (compile, then DDP),
  ``optimizer_step``, ``stop_if_not_finite``, and an inference's claim on its output folders
  (``claim_outputs`` / ``pending_outputs``).
"""
