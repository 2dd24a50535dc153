"""One router per resource: search, images (index, read, delete), system (health, stats), page."""
