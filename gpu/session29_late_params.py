"""benches/profile_step.py with every generated kernel's parameter loads after the PDL wait (as before session 29):
the A/B of kernel.split_before_wait, which issues them ahead of the wait (a patch for the A/B, not an option).

    python gpu/session29_late_params.py --models llama-1b --batches 1,8 --out DIR
"""
import runpy
import sys

from membound.backends.triton import kernel

kernel.split_before_wait = lambda lines, params: ([], lines)
sys.argv = ["benches/profile_step.py", *sys.argv[1:]]
runpy.run_path("benches/profile_step.py", run_name="__main__")
