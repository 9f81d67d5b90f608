"""Rules: the pure, synchronous decision. Standard library only."""
