"""The anatomy views: pure functions that turn what Stable Diffusion computes (noised latents, x0
predictions, latents, tokens, sigmas, ...) into labelled pictures. torch, einops and Pillow only."""
