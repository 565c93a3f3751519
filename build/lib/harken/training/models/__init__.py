"""Network definitions (torch): the edge scorers the device runs once exported, and their losses."""
