"""Preference data: records, loaders for the shared sets and generic formats,
task mapping, capability points, and deterministic splits."""
