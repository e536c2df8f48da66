"""Pure loss functions on arrays; each tested against a float64 reference in tests/."""
