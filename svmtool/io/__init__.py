"""The IO edge: downloads, datasets, model files, images, caches and the user's own
code; everything from outside is checked here before the core sees it."""
