"""Euler, Euler Ancestral, Heun, HeunPP2, LMS, DPM_2 (+ Ancestral), DDIM, LCM."""
