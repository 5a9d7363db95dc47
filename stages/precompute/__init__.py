"""Stage one: teacher similarities over global and tile views for every augment seed, into the store."""
