"""Learning stage: alignment to annotations, folds, training, prediction, reports."""
