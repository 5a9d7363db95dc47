"""Evaluation: metrics, pseudo-label quality, reports and plots."""
