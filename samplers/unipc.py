"""UniPC predictor-corrector (Zhao et al. 2302.04867), bh1 and bh2."""
