"""Cell–cell interaction: windows of the image with their contact counts (:mod:`.windows`, :mod:`.slide`)
and the regressors that predict the count from the VAE latent or from the pixels (:mod:`.regression`)."""
