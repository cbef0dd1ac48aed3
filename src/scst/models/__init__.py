"""scst.models."""
