"""One module per CLI verb; each defines ``register(app)``. ``tooltune.cli`` discovers them."""
