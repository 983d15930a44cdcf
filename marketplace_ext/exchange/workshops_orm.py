"""Tables of the workshops concern (filled by its owner)."""
