"""Patient level: one row per patient, then the two-stage patient model.

* :mod:`.aggregate`: every slide's cells, predictions and latent clusters -> the patient table
  (``patients.parquet``) with its column descriptions.
* :mod:`.table`: which columns of that table are features, which patients are labelled.
* :mod:`.settings`: the ``patient_model`` settings (defaults from the config schema) and their checks.
* :mod:`.ensemble`: the four-model pipelines (SMOTE inside), :class:`~.ensemble.StageModel`,
  :class:`~.ensemble.TwoStageModel`.
* :mod:`.evaluation`: metrics, bootstrap intervals, feature importances.
* :mod:`.training`: cross-validation and :func:`~.training.train_two_stage`.
* :mod:`.prediction`: :func:`~.prediction.predict_two_stage` and the model file.

Nothing is imported here: the model modules load scikit-learn, XGBoost and CatBoost.
"""
