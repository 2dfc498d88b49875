"""posmon agent."""
