"""DPM-Solver++ (Lu et al. 2211.01095): 2M, 2M SDE, 2S Ancestral, 3M SDE."""
