"""PNDM (Liu et al. 2202.09778) and PLMS (CompVis latent diffusion)."""
