"""Uploaded datasets: their rows and upload sessions (repository) and the rules of uploading and validating them."""
