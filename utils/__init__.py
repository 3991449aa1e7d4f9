"""Ground-floor helpers: pure functions that import nothing of ours above them."""
