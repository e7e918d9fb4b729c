"""The torch layer: the cell CNN (:mod:`~hemoprofile.nn.cnn`), the convolutional VAE
(:mod:`~hemoprofile.nn.vae`), batch augmentations and stored-patch scaling (:mod:`~hemoprofile.nn.augment`),
the one helper that picks the device and its settings (:mod:`~hemoprofile.nn.devices`), and
settings dataclasses built from config mappings (:mod:`~hemoprofile.nn.settings`).

Stages that train or run networks import these; nothing here knows a stage.
"""
