"""One router per resource: tag, embed, detect, models, health, metrics."""
