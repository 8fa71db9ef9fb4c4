"""benches/profile_step.py with the row-sibling merge off (schedule._row_siblings finds no runs): session 28's A/B of
session 27's merge of independent row kernels over equal rows (not an option of the compiler: a patch for the A/B).

    python gpu/session28_nosiblings.py --source recurrent --models qwen3.5-0.8b-like --batches 1 --out DIR
"""
import runpy
import sys

from membound.backends.triton import schedule

schedule._row_siblings = lambda *args, **kwargs: []
sys.argv = ["benches/profile_step.py", *sys.argv[1:]]
runpy.run_path("benches/profile_step.py", run_name="__main__")
