"""The torch layer: the cell CNN (:mod:`~hemoprofile.nn.cnn`), the convolutional VAE
(:mod:`~hemoprofile.nn.vae`), batch augmentations and stored-patch scaling (:mod:`~hemoprofile.nn.augment`),
and the one helper that picks the device and its settings (:mod:`~hemoprofile.nn.devices`).

Stages that train or run networks import these; nothing here knows a stage.
"""
