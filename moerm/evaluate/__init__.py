"""Evaluation: pairwise accuracy against human labels with confidence
intervals, for DMoERM and its baselines, written as JSON + Markdown + PNG."""
