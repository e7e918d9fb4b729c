"""The embed stage: an unsupervised latent space of cell patches (a VAE, or a conditional VAE that
conditions on slide, batch or condition), a 2-D map and latent clusters fitted once on a training sample
and applied to every slide, honest metrics of both, and cohort figures.

Modules (the workflow's ``train_embedder``, ``embed`` and ``embedding_figures`` rules call the first
function named on each line):

- :mod:`~hemoprofile.embed.training`: :func:`train_embedder`; fit_vae, encode, reconstruct.
- :mod:`~hemoprofile.embed.slide`: :func:`embed_slide` (-> ``embedding.parquet``), read_embeddings.
- :mod:`~hemoprofile.embed.maps`: :func:`cohort_figures` (PNG maps, reconstructions, cohort metrics).
- :mod:`~hemoprofile.embed.sample`: EmbedSlide (one slide's inputs), the seeded training sample,
  reference labels, the cVAE condition rows.
- :mod:`~hemoprofile.embed.clustering`: the 2-D map (PCA) and the latent clusters (GMM or k-means,
  k by BIC), scikit-learn fits stored as plain arrays.
- :mod:`~hemoprofile.embed.conditions`: :func:`clusters_by_condition` (latent clusters by condition: shares,
  log2 enrichment, Fisher / chi-square and patient-level tests, BH-adjusted; medoids).
- :mod:`~hemoprofile.embed.metrics`: silhouette, Davies-Bouldin, Calinski-Harabasz, ARI, NMI, purity, clustering accuracy,
  batch mixing (kNN batch entropy); the metrics JSON.
- :mod:`~hemoprofile.embed.model_files`: the embedder model file (save / load, :class:`Embedder`).
- :mod:`~hemoprofile.embed.settings`: the ``embed`` config section (defaults read from the schema).

Nothing is imported here: ``import hemoprofile.embed`` stays free of torch; import from the modules.
"""
