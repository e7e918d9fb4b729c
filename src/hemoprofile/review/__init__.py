"""CTC review: per-slide candidates (:mod:`~hemoprofile.review.candidates`), the calibrated candidate
threshold (:mod:`~hemoprofile.review.calibration`), the reviewer's page (:mod:`~hemoprofile.review.page`),
the decisions it exports read back (:mod:`~hemoprofile.review.decisions`), and the cohort's CTC table with
exact Poisson intervals (:mod:`~hemoprofile.review.cohort`, :mod:`~hemoprofile.review.rates`).

This stage reads the classify/extract outputs and the shared layers (io, vocabulary, the report's HTML and
image helpers); the patient aggregation reads its candidates and decisions.
"""
