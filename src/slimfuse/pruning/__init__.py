"""Pruning: unstructured magnitude masks and structured removal of channels, neurons and heads."""
