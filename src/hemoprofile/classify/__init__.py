"""Cell classifiers: training data from patches.zarr + labels, held-out splits, training, model files,
inference and metrics.

Modules:

- :mod:`~hemoprofile.classify.settings`: the ``classify`` config section (defaults from the schema);
- :mod:`~hemoprofile.classify.labels`: where labels come from, and labelled cells gathered from slides;
- :mod:`~hemoprofile.classify.splits`: train / validation / test splits held out by patient or slide;
- :mod:`~hemoprofile.classify.training`: fitting a CellNet, a task end to end, the ``train_classifier`` stage;
- :mod:`~hemoprofile.classify.checkpoints`: model files (save, load, model id);
- :mod:`~hemoprofile.classify.inference`: probabilities, channel matching, the ``classify`` stage;
- :mod:`~hemoprofile.classify.metrics`: accuracy, balanced accuracy, macro F1, confusion matrix;
- :mod:`~hemoprofile.classify.calibration`: the ctc classifier's calibrated probability and the CTC
  candidate threshold chosen on its held-out patients (the ``calibrate_ctc`` stage);
- :mod:`~hemoprofile.classify.candidates`: a slide's CTC candidates (the ``ctc_candidates`` stage).

Tasks (:data:`hemoprofile.vocabulary.TASKS`) map a cell type to the class a classifier predicts:
``lineage`` (lymphoid vs myeloid), ``immune5`` (T, B, NK, granulocyte, monocyte), ``immune6`` (CD4_T,
CD8_T, B, NK, granulocyte, monocyte), ``ctc`` (CTC vs leukocyte), ``hierarchical`` (a ``lineage`` model,
then one sub-classifier per lineage; the leaf probability is p(lineage) x p(type | lineage)) and
``collection`` (the labels of a single-cell collection as they are, e.g. the 8 PBC classes).

Nothing is imported here: the modules that train or run networks import torch.
"""
