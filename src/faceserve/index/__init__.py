"""Per-session face indexes: the registry that owns them, their kinds, saved copies, and cross-process sync."""
