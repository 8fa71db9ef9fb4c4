"""benches/profile_step.py with kernel.ROW_LATE_SIGNAL on: a generated row kernel signals the next kernel (PDL
mode 1) after its first store instead of at its wait (session 29's A/B; an experiment flag, not an option).

    python gpu/session29_signal.py --models llama-1b --batches 1,8 --out DIR
"""
import runpy
import sys

from membound.backends.triton import kernel

kernel.ROW_LATE_SIGNAL = True
sys.argv = ["benches/profile_step.py", *sys.argv[1:]]
runpy.run_path("benches/profile_step.py", run_name="__main__")
