"""The roofline cost model: hardware specs, per-op and per-kernel estimates, whole-graph analysis.

Every pass asks it whether a rewrite pays (``ctx.cost.estimate(node_or_partition, dims)``); this
package imports nothing of membound but ``membound.ir``.

    from membound.cost import Hardware, RooflineCost
    cost = RooflineCost(Hardware.detect())          # or calibrate() for measured ceilings
    cost.estimate(node, {"B": 1, "S": 1})           # Estimate(flops, bytes, time_s, bound, intensity)
"""

from membound.cost.hardware import SPECS, Hardware, KernelClass
from membound.cost.measure import calibrate
from membound.cost.phases import PhaseCost, Phases, analyze, kv_cache_bytes_per_token
from membound.cost.roofline import CostModel, Estimate, RooflineCost, SymbolicCost
from membound.cost.step import STEP_PRIORS, KernelWork, StepPrediction, predict_step, step_priors

__all__ = ["CostModel", "Estimate", "Hardware", "KernelClass", "KernelWork", "PhaseCost", "Phases", "RooflineCost",
           "SPECS", "STEP_PRIORS", "StepPrediction", "SymbolicCost", "analyze", "calibrate", "kv_cache_bytes_per_token",
           "predict_step", "step_priors"]
