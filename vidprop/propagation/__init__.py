"""propagation stage."""
