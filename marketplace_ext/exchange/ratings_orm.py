"""Tables of the ratings concern (filled by its owner)."""
