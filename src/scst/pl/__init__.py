"""scst.pl."""
