"""AutoencoderKL (the SD VAE) with LDM module names, tiled encode/decode; pure torch."""
