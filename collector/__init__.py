"""posmon collector."""
