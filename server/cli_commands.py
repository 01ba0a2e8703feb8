"""Commands contributed by other parts (users, demo, audit) register on import here."""
