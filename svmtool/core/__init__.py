"""The numerical core: numpy and the standard library only; no files, no printing,
no network. Randomness comes in as a numpy Generator."""
