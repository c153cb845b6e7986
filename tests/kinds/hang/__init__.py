"""``hang``: a kind whose step never checks in (or returns at once), and whose run module is slow to import."""
