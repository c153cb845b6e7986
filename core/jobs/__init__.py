"""The job lifecycle: states, SQL models and the store that moves jobs between states."""
