"""Model families. One family per file, like timm."""
