"""API keys: who is calling, and the keys' rows."""
