"""scst.nn."""
