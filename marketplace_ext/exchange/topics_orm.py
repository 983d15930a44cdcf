"""Tables of the topics concern (filled by its owner)."""
