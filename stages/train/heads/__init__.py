"""Classifier heads of particular methods (MIME's label-query transformer, SMILE's label enhancement), each
registered in `mlpl.stages.train.models.HEADS` when `models` is imported."""
