"""Measuring models on stored faces: metrics, evaluation, person folds, calibration of a model, data hygiene, reports."""
