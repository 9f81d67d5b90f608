"""Network side: listeners, relays, PROXY protocol. Standard library only."""
