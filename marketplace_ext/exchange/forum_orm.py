"""Tables of the forum concern (filled by its owner)."""
