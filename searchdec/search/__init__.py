"""Search: the node tree and the algorithms that expand it (greedy and sampling so far)."""

from searchdec.search.sampling import Greedy, Sample
from searchdec.search.tree import Node

__all__ = ["Greedy", "Node", "Sample"]
