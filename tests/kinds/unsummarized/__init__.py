"""``unsummarized``: a kind that runs and returns a result, and whose summary raises (a bug in a summary module)."""
