"""The shapes world: a procedurally rendered scene family and the small models trained on it."""
