"""The sampler lab: every sampler measured by its error against a converged reference, per model call and per second.

Pure torch (no ComfyUI): `sweep.py` runs the sweep on any `Backend` (the embedded model in pure
torch for the command line `bench/sampler_lab.py`, ComfyUI's sampling for the node), `reference.py`
solves the probability-flow ODE to convergence, `report.py` writes the CSV/Markdown rows and draws the
grid and the error-vs-NFE plot (with `anatomy/draw.py`). On the embedded model, `judged.py` measures what the
pictures show (adherence, sharpness, a Fréchet distance; `embedded/judge.py` reads them), `judged_sweep.py`
runs a judged sweep cell by cell with resume, `ray_runner.py` runs those cells on Ray (optional extra,
lab/requirements-ray.txt) and `judged_report.py` turns the rows into ranks, a table and plots.
"""
