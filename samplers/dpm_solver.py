"""DPM-Solver (Lu et al. 2206.00927): DPM-Fast and DPM-Adaptive."""
