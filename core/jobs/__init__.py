"""Jobs: their states, the repository that moves them between states, admission, the service the API calls,
event feeds and retention."""
