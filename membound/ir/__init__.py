"""membound IR: typed SSA graphs whose dims are sympy expressions. Imports nothing else of membound."""

from membound.ir.analysis import structurally_equal, to_networkx
from membound.ir.graph import Graph, IRError, Node, Value
from membound.ir.ops import OpDef, all_ops, define_op, get_op, has_op
from membound.ir.parser import ParseError, parse
from membound.ir.printer import print_graph
from membound.ir.types import B, S, T, TensorType, dtype_name, parse_dtype, sym
from membound.ir.verify import VerificationError, verify

__all__ = [
    "B", "S", "T", "Graph", "IRError", "Node", "OpDef", "ParseError", "TensorType", "Value", "VerificationError",
    "all_ops", "define_op", "dtype_name", "get_op", "has_op", "parse", "parse_dtype", "print_graph",
    "structurally_equal", "sym", "to_networkx", "verify",
]
