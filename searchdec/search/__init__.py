"""Search: the node tree and the algorithms that expand it, one module per algorithm."""

from searchdec.search.beam import Beam
from searchdec.search.best_first import BestFirstBeam
from searchdec.search.expand import SearchResult, SearchStats
from searchdec.search.sampling import Greedy, Sample
from searchdec.search.trace import Trace
from searchdec.search.tree import Node

__all__ = ["Beam", "BestFirstBeam", "Greedy", "Node", "Sample", "SearchResult", "SearchStats", "Trace"]
