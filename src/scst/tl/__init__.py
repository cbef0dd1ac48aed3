"""scst.tl."""
