"""pytest fixtures shipped with dspex (simulated LM server, scripted LMs)."""
