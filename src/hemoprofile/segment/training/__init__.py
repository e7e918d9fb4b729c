"""Training and scoring the project's own Cellpose segmentation model (the workflow's ``train_segmenter``
rule; models/README.md tells how the bundled model was made).

- :mod:`~hemoprofile.segment.training.data`: the DSB 2018 split and images, and the synthetic training
  cohort read from disk, all prepared by :func:`hemoprofile.segment.input.cellpose_input`.
- :mod:`~hemoprofile.segment.training.train`: the training run (``train_from_config``, ``train_segmenter``).
- :mod:`~hemoprofile.segment.training.evaluate`: a model file scored on prepared inputs with truth labels.
- :mod:`~hemoprofile.segment.training.annotations`: a lab's own folders of image / mask pairs (Cellpose
  GUI ``_seg.npy``, ``_masks.tif``/png), checked file by file.
- :mod:`~hemoprofile.segment.training.finetune`: fine-tuning on those folders with held-out scores
  before and after (``hemoprofile train-segmenter``, the workflow's ``finetune_segmenter`` rule).
"""
